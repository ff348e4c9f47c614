import {
  type AsyncStorageLike,
  type AsyncStorageOptions,
  asyncStorage,
  createTokenManager,
  isTokenflowError,
  type JsonRefreshOptions,
  jsonRefresh,
  type OAuthRefreshOptions,
  oauthRefresh,
  type RefreshError,
  type RefreshErrorKind,
  type TokenStorage,
  type WebStorageOptions,
  webStorage,
} from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import { createAuthFetch } from '@tokenflow/client/fetch'
import axios from 'axios'
import { describe, expectTypeOf, it } from 'vitest'

describe('@tokenflow/client option types', () => {
  it('names the options of every factory, so an app can build them apart', () => {
    expectTypeOf(jsonRefresh).parameter(1).toEqualTypeOf<JsonRefreshOptions | undefined>()
    expectTypeOf(oauthRefresh).parameter(1).toEqualTypeOf<OAuthRefreshOptions>()
    expectTypeOf(webStorage).parameter(1).toEqualTypeOf<WebStorageOptions | undefined>()
    expectTypeOf(asyncStorage).parameter(1).toEqualTypeOf<AsyncStorageOptions | undefined>()
  })
})

describe('isTokenflowError', () => {
  it('narrows to a RefreshError on code ERR_REFRESH_FAILED, and to the other codes otherwise', () => {
    const error: unknown = new Error('x')
    if (isTokenflowError(error)) {
      if (error.code === 'ERR_REFRESH_FAILED') {
        expectTypeOf(error).toEqualTypeOf<RefreshError>()
        expectTypeOf(error.kind).toEqualTypeOf<RefreshErrorKind>()
      } else {
        expectTypeOf(error.code).toEqualTypeOf<
          'ERR_INVALID_OPTION' | 'ERR_NO_REFRESH_TOKEN' | 'ERR_SESSION_CLEARED' | 'ERR_STORAGE'
        >()
        // @ts-expect-error only a RefreshError has a kind
        error.kind
      }
    }
  })
})

describe('optional options given as undefined (an unset environment variable)', () => {
  it('bug: refused undefined under exactOptionalPropertyTypes (TS2379); every optional option takes it as its default', () => {
    const env: Record<string, string | undefined> = {}
    const storage = webStorage(undefined, { key: env.TOKEN_KEY })
    const manager = createTokenManager({
      refresh: jsonRefresh('/refresh/token', {
        fetch: undefined,
        headers: undefined,
        credentials: undefined,
      }),
      storage: undefined,
      leeway: undefined,
      refreshTimeout: undefined,
      retry: { attempts: undefined, baseDelay: undefined, maxDelay: undefined },
      lock: undefined,
      lockTimeout: undefined,
      channel: env.CHANNEL,
      now: undefined,
    })
    oauthRefresh('/oauth/token', { clientId: 'web', fetch: undefined, headers: undefined })
    asyncStorage(AsyncStorageStub, {
      accessTokenKey: env.ACCESS_KEY,
      refreshTokenKey: undefined,
      expiresAtKey: undefined,
    })
    createAuthFetch(manager, { fetch: undefined, shouldRefresh: undefined })
    attachTokenRefresh(axios.create(), manager, { shouldRefresh: undefined })
    const custom: TokenStorage = { get: () => null, set() {}, clear() {}, shared: undefined }
    expectTypeOf(storage).toMatchTypeOf<TokenStorage>()
    expectTypeOf(custom).toMatchTypeOf<TokenStorage>()
  })
})

declare const AsyncStorageStub: AsyncStorageLike
