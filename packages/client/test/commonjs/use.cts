// The README's axios example in a CommonJS TypeScript file; see tsconfig.json here.
import { createTokenManager, jsonRefresh, memoryStorage } from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import axios from 'axios'

const api = axios.create({ baseURL: 'https://api.example.com' })
const manager = createTokenManager({
  refresh: jsonRefresh('https://api.example.com/refresh/token'),
  storage: memoryStorage(),
})
// was TS2345: the instance from axios's index.d.cts against an AxiosInstance of its index.d.ts
export const detach: () => void = attachTokenRefresh(api, manager, {
  shouldRefresh: (error) => error.response?.status === 401,
})
// was TS2353: the `tokenflow` option augmented the other declaration file
export const login = api.post('/auth/login', {}, { tokenflow: { skip: true } })
