export type { AnyTokenflowError, RefreshErrorKind, TokenflowErrorCode } from './errors.js'
export { isRefreshError, isTokenflowError, RefreshError, TokenflowError } from './errors.js'
export type { JsonRefreshOptions, OAuthRefreshOptions } from './refresh.js'
export { jsonRefresh, oauthRefresh } from './refresh.js'
export type { AsyncStorageLike, AsyncStorageOptions, StorageLike, WebStorageOptions } from './storage.js'
export { asyncStorage, memoryStorage, webStorage } from './storage.js'
export type {
  RetryOptions,
  TokenEvent,
  TokenManager,
  TokenManagerOptions,
  TokenStatus,
} from './token-manager.js'
export { createTokenManager } from './token-manager.js'
export type { LockManagerLike, RefreshContext, RefreshFunction, TokenSet, TokenStorage } from './types.js'
