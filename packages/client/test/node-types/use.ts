// Every entry point of @tokenflow/client as a Node (SSR) app uses it; see tsconfig.json here.
import {
  asyncStorage,
  createTokenManager,
  isTokenflowError,
  jsonRefresh,
  memoryStorage,
  oauthRefresh,
  type RefreshError,
  type TokenManager,
  webStorage,
} from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import { createAuthFetch } from '@tokenflow/client/fetch'
import axios from 'axios'

export const manager: TokenManager = createTokenManager({
  refresh: jsonRefresh('https://api.example.com/refresh/token', {
    headers: { 'x-csrf-token': 'token' },
    credentials: 'include',
  }),
  storage: memoryStorage(),
})
export const oauth = oauthRefresh('https://auth.example.com/oauth/token', {
  clientId: 'web',
  headers: [['authorization', 'Basic d2ViOnNlY3JldA==']],
})
export const storages = [webStorage, asyncStorage]
export const detach: () => void = attachTokenRefresh(axios.create(), manager)
export const authFetch: typeof fetch = createAuthFetch(manager)
export const kind = (error: unknown): RefreshError['kind'] | undefined =>
  isTokenflowError(error) && 'kind' in error ? (error as RefreshError).kind : undefined
