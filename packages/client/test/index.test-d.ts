import {
  type AsyncStorageOptions,
  asyncStorage,
  type JsonRefreshOptions,
  jsonRefresh,
  type OAuthRefreshOptions,
  oauthRefresh,
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
