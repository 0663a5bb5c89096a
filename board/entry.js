// The one entry of the board's vendored bundle: every library imports the same yjs, so the
// bundle holds exactly one copy of it (two copies break `instanceof Y.Map`).
export * as Y from 'yjs'
export { WebsocketProvider } from 'y-websocket'
export { IndexeddbPersistence } from 'y-indexeddb'
