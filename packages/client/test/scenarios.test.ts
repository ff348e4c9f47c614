import axios from 'axios'
// the oldest axios the peer range (>=1.6.0) allows, installed under another name; its own types differ
import axios16 from 'axios-1.6'
import { afterEach, beforeEach, describe, it } from 'vitest'
import {
  axiosAdapter,
  axiosAdapterFor,
  fetchAdapter,
  type ScenarioContext,
  scenarios,
  startScenarioContext,
} from './helpers/scenarios.js'

/**
 * The numbers the README promises, for every adapter: one list of scenarios (test/helpers/scenarios.ts),
 * each run with real axios + attachTokenRefresh (the current axios, and 1.6.0, the oldest the peer range
 * allows) and with createAuthFetch over the real global fetch, against a real HTTP server on 127.0.0.1
 * with rotating refresh tokens and reuse detection.
 */
const axios16Adapter = axiosAdapterFor(
  `axios ${axios16.VERSION}`,
  axios16 as unknown as Parameters<typeof axiosAdapterFor>[1],
)

// axios's fetch adapter (1.7 and later), which sends bodies and aborts through fetch. In Node it labels a
// FormData body application/x-www-form-urlencoded (the multipart body is right): axios's own doing, on the
// first try as on the retry, which is what the scenario checks
const axiosFetchAdapter = axiosAdapterFor(
  'axios with adapter: fetch',
  axios,
  { adapter: 'fetch' },
  /^application\/x-www-form-urlencoded$/,
)

describe.each([axiosAdapter, axios16Adapter, axiosFetchAdapter, fetchAdapter])(
  'scenarios with $name and a real server',
  (adapter) => {
    let context: ScenarioContext
    beforeEach(async () => {
      context = await startScenarioContext(adapter)
    })
    afterEach(() => context.close())

    for (const scenario of scenarios) it(scenario.name, () => scenario.run(context))
  },
)
