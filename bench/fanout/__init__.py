"""The fan-out benchmark: productflo beside a naive in-memory server and Node Socket.IO."""
