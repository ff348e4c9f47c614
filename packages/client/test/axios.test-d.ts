import type { TokenManager } from '@tokenflow/client'
import {
  type AttachTokenRefreshOptions,
  attachTokenRefresh,
  type TokenflowRequestOptions,
} from '@tokenflow/client/axios'
import axios, { type AxiosError, type AxiosRequestConfig, type InternalAxiosRequestConfig } from 'axios'
import { describe, expectTypeOf, it } from 'vitest'

declare const manager: TokenManager

describe('@tokenflow/client/axios types', () => {
  it('attachTokenRefresh returns the detach function', () => {
    expectTypeOf(attachTokenRefresh).returns.toEqualTypeOf<() => void>()
    expectTypeOf(attachTokenRefresh(axios.create(), manager)).toEqualTypeOf<() => void>()
    expectTypeOf(attachTokenRefresh).parameter(2).toEqualTypeOf<AttachTokenRefreshOptions | undefined>()
  })

  it('types shouldRefresh with the AxiosError', () => {
    attachTokenRefresh(axios.create(), manager, {
      shouldRefresh: (error) => {
        expectTypeOf(error).toEqualTypeOf<AxiosError>()
        return error.response?.status === 401
      },
    })
    // @ts-expect-error shouldRefresh answers a boolean
    attachTokenRefresh(axios.create(), manager, { shouldRefresh: () => 'yes' })
  })

  it('accepts tokenflow.skip on request configs, through module augmentation', () => {
    void axios.get('/login', { tokenflow: { skip: true } })
    void axios.post('/refresh/token', { refreshToken: 'x' }, { tokenflow: { skip: false } })
    void axios.request({ url: '/x', tokenflow: {} })
    expectTypeOf<AxiosRequestConfig['tokenflow']>().toEqualTypeOf<TokenflowRequestOptions | undefined>()
    expectTypeOf<InternalAxiosRequestConfig['tokenflow']>().toEqualTypeOf<
      TokenflowRequestOptions | undefined
    >()
    expectTypeOf<TokenflowRequestOptions>().toEqualTypeOf<{ skip?: boolean | undefined }>()
  })

  it('rejects a tokenflow.skip that is not a boolean, and unknown tokenflow options', () => {
    // @ts-expect-error skip is a boolean
    void axios.get('/login', { tokenflow: { skip: 'yes' } })
    // @ts-expect-error there is no such option
    void axios.get('/login', { tokenflow: { retry: false } })
  })
})
