// The fan-out benchmark's Node baseline: a plain Socket.IO 4 server, default options (no
// perMessageDeflate), one process, nothing stored.
//
//   node server.js [--port 0] [--host 127.0.0.1]
//
// Prints {"port": N} on standard output once it listens; GET /readyz (any path but Socket.IO's)
// answers "ok". The user is the handshake's `user_id`
// query parameter. `join` puts the socket in the envelope's room and tells the room (the joiner
// included); `message` (a chat) goes to every member of its room, the sender included, as an
// envelope of productflo's shape: {status, code, user_id, room_id, timestamp, data, event_id}.

'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at > 0 ? process.argv[at + 1] : fallback;
}

let lastEventId = 0;

function envelope(code, user, room, data) {
  lastEventId += 1;
  return {
    status: 'success', code, user_id: user, room_id: room,
    timestamp: new Date().toISOString(), data, event_id: lastEventId,
  };
}

const httpServer = http.createServer((request, response) => response.end('ok'));
const io = new Server(httpServer);

io.on('connection', (socket) => {
  const user = String(socket.handshake.query.user_id);
  socket.on('join', (inbound) => {
    const room = String(inbound.room_id);
    socket.join(room);
    io.to(room).emit('message', envelope('system', user, room, {
      message: `${user} joined the room`,
      details: { action: 'join', user_id: user, room_id: room },
    }));
  });
  socket.on('message', (inbound) => {
    const room = String(inbound.room_id);
    const data = inbound.data || {};
    io.to(room).emit('message', envelope('chat_response', user, room, {
      message: data.message, sender: user,
    }));
  });
});

httpServer.listen(Number(option('port', '0')), option('host', '127.0.0.1'), () => {
  process.stdout.write(JSON.stringify({ port: httpServer.address().port }) + '\n');
});

process.on('SIGTERM', () => {
  io.close();
  process.exit(0);
});
