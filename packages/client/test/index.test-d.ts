import {
  type AsyncStorageOptions,
  asyncStorage,
  isTokenflowError,
  type JsonRefreshOptions,
  jsonRefresh,
  type OAuthRefreshOptions,
  oauthRefresh,
  type RefreshError,
  type RefreshErrorKind,
  type WebStorageOptions,
  webStorage,
} from '@tokenflow/client'
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
