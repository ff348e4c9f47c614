import type { TokenManager } from '@tokenflow/client'
import { type AuthFetchOptions, createAuthFetch } from '@tokenflow/client/fetch'
import { describe, expectTypeOf, it } from 'vitest'

declare const manager: TokenManager

describe('@tokenflow/client/fetch types', () => {
  it('createAuthFetch returns exactly the type of fetch', () => {
    expectTypeOf(createAuthFetch(manager)).toEqualTypeOf<typeof fetch>()
    expectTypeOf(createAuthFetch(manager, { fetch })).toEqualTypeOf<typeof fetch>()
    expectTypeOf(createAuthFetch).returns.toEqualTypeOf<typeof fetch>()
    expectTypeOf(createAuthFetch(manager)).parameters.toEqualTypeOf<Parameters<typeof fetch>>()
    expectTypeOf(createAuthFetch(manager)).returns.toEqualTypeOf<Promise<Response>>()
  })

  it('takes the manager and optional options', () => {
    expectTypeOf(createAuthFetch).parameter(0).toEqualTypeOf<TokenManager>()
    expectTypeOf(createAuthFetch).parameter(1).toEqualTypeOf<AuthFetchOptions | undefined>()
    // @ts-expect-error the manager is required
    createAuthFetch()
  })

  it('types the fetch option as fetch, and shouldRefresh with the Response', () => {
    expectTypeOf<AuthFetchOptions['fetch']>().toEqualTypeOf<typeof fetch | undefined>()
    createAuthFetch(manager, {
      shouldRefresh: (response) => {
        expectTypeOf(response).toEqualTypeOf<Response>()
        return response.status === 401 || response.status === 419
      },
    })
    // @ts-expect-error shouldRefresh answers a boolean
    createAuthFetch(manager, { shouldRefresh: () => 'yes' })
    // @ts-expect-error the fetch option has fetch's signature
    createAuthFetch(manager, { fetch: (input: number) => Promise.resolve(new Response(String(input))) })
  })

  it('fits wherever a fetch goes: the global one, and the fetch options of other libraries', () => {
    const authFetch = createAuthFetch(manager)
    const replaced: typeof globalThis.fetch = authFetch
    const options: { fetch?: typeof fetch } = { fetch: authFetch }
    expectTypeOf(replaced).toEqualTypeOf(authFetch)
    expectTypeOf(options.fetch).toEqualTypeOf<typeof fetch | undefined>()
  })
})
