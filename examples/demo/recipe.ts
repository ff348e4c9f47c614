/**
 * The well-known axios-interceptor recipe that tokenflow replaces, transcribed faithfully, bugs included.
 * DO NOT USE IT. It is here so the demo (and the bench) can send the same storm through it.
 *
 * The only changes from the blog version: it is installed on an instance handed in instead of the
 * global `axios`, AsyncStorage is handed in (the demo runs in Node), and it has types. Everything
 * else, including the module-global state, is as copied into countless apps. Its known bugs:
 * - the request whose 401 starts the refresh subscribes only after the subscribers were called,
 *   so it is not retried by that refresh (it hangs until a later refresh, if one ever comes);
 * - `refreshSubscribers` is never cleared, so every later refresh sends every earlier request again;
 * - a failed refresh leaves `isTokenRefreshing` set, so every later 401 waits forever;
 * - a subscriber only ever receives a token: waiters cannot be rejected;
 * - a retried request that gets 401 again goes round again, with no limit;
 * - the refresh call goes through the intercepted instance: when it gets a 401 it waits on itself;
 * - a late 401 for a request sent with the old token, arriving after the refresh finished, starts a
 *   second refresh (one more rotation, and one more round of every earlier request);
 * - `isTokenRefreshing` and `refreshSubscribers` are module-global, shared by every instance and user;
 * - an error without a response (network error) throws a TypeError in the destructuring.
 */
import type { AxiosInstance } from 'axios'

/** The part of React Native's AsyncStorage the recipe uses. */
export interface RecipeAsyncStorage {
  getItem(key: string): Promise<string | null>
  multiSet(pairs: Array<[string, string]>): Promise<void>
}

let isTokenRefreshing = false
// `let` in the blog post, but nothing ever empties it: that is the bug, and why the linter asks for `const`
const refreshSubscribers: Array<(accessToken: string) => void> = []

const onTokenRefreshed = (accessToken: string) => {
  refreshSubscribers.map((callback) => callback(accessToken))
}

const addRefreshSubscriber = (callback: (accessToken: string) => void) => {
  refreshSubscribers.push(callback)
}

/**
 * Installs the recipe's interceptors on `axiosInstance`, as the blog post does on the global axios.
 * @example
 * installRecipe(api, { baseUrl: 'http://127.0.0.1:3000', AsyncStorage })
 */
export function installRecipe(
  axiosInstance: AxiosInstance,
  { baseUrl, AsyncStorage }: { baseUrl: string; AsyncStorage: RecipeAsyncStorage },
): void {
  axiosInstance.interceptors.request.use(async (config) => {
    const accessToken = await AsyncStorage.getItem('accessToken')
    config.headers.Authorization = `Bearer ${accessToken}`
    return config
  })

  axiosInstance.interceptors.response.use(
    (response) => response,
    async (error) => {
      const {
        config,
        response: { status },
      } = error
      const originalRequest = config
      if (status === 401) {
        if (!isTokenRefreshing) {
          isTokenRefreshing = true
          const refreshToken = await AsyncStorage.getItem('refreshToken')
          const { data } = await axiosInstance.post(`${baseUrl}/refresh/token`, { refreshToken })
          const { accessToken: newAccessToken, refreshToken: newRefreshToken } = data
          await AsyncStorage.multiSet([
            ['accessToken', newAccessToken],
            ['refreshToken', newRefreshToken],
          ])
          isTokenRefreshing = false
          axiosInstance.defaults.headers.common.Authorization = `Bearer ${newAccessToken}`
          onTokenRefreshed(newAccessToken)
        }
        const retryOriginalRequest = new Promise((resolve) => {
          addRefreshSubscriber((accessToken) => {
            originalRequest.headers.Authorization = `Bearer ${accessToken}`
            resolve(axiosInstance(originalRequest))
          })
        })
        return retryOriginalRequest
      }
      return Promise.reject(error)
    },
  )
}
