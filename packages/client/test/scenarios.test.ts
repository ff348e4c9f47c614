import { afterEach, beforeEach, describe, it } from 'vitest'
import {
  axiosAdapter,
  fetchAdapter,
  type ScenarioContext,
  scenarios,
  startScenarioContext,
} from './helpers/scenarios.js'

/**
 * The numbers the README promises, for every adapter: one list of scenarios (test/helpers/scenarios.ts),
 * each run with real axios + attachTokenRefresh and with createAuthFetch over the real global fetch,
 * against a real HTTP server on 127.0.0.1 with rotating refresh tokens and reuse detection.
 */
describe.each([axiosAdapter, fetchAdapter])('scenarios with $name and a real server', (adapter) => {
  let context: ScenarioContext
  beforeEach(async () => {
    context = await startScenarioContext(adapter)
  })
  afterEach(() => context.close())

  for (const scenario of scenarios) it(scenario.name, () => scenario.run(context))
})
