/**
 * What `fn` throws (the test fails when it returns).
 * @example
 * expect(thrown(() => createSqliteStore({ busyTimeout: -1 }))).toMatchObject({ code: 'ERR_CONFIG' })
 */
export function thrown(fn: () => unknown): unknown {
  try {
    fn()
  } catch (error) {
    return error
  }
  throw new Error('expected a throw')
}
