// whatwg-fetch (React Native's fetch) ships no types; the tests use its classes where fetch's own are
declare module 'whatwg-fetch' {
  export const Request: typeof globalThis.Request
  export const Headers: typeof globalThis.Headers
  export const Response: typeof globalThis.Response
  export const fetch: typeof globalThis.fetch
}
