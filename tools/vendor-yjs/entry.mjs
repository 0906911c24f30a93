// What the web client and the Node tests use of Yjs, as one module: no build step anywhere else.
export * from 'yjs'
export {
  Awareness,
  applyAwarenessUpdate,
  encodeAwarenessUpdate,
  removeAwarenessStates
} from 'y-protocols/awareness'
export { fromBase64, toBase64 } from 'lib0/buffer'
