// What the seed-example harnesses share: the seed's names, console.log captured as the
// observation, what counts as the welcome and as the answer to the example's message, and how a
// run ends (each console.log call printed on stdout as one JSON array per line).

'use strict';

const SEED_USER = 'user-123';
const SEED_ROOM = 'product-456';
const WELCOME = 'Connected to ProductFlo WebSocket server';
const TIMEOUT_MS = Number(process.env.PRODUCTFLO_TEST_TIMEOUT_MS || 10000);

const printed = [];
console.log = (...args) => {
  printed.push(args);
};

function isWelcome(data) {
  return data.code === 'system' && data.status === 'success' && data.data?.message === WELCOME;
}

function isAnswer(data, text) {
  return (
    data.code === 'chat_response' &&
    data.status === 'success' &&
    data.room_id === SEED_ROOM &&
    data.user_id === SEED_USER &&
    data.data?.message === text &&
    Number.isInteger(data.event_id)
  );
}

function finisher(name) {
  return (code, reason) => {
    if (reason) process.stderr.write(`${name}: ${reason}\n`);
    const lines = printed.map((args) => JSON.stringify(args)).join('\n');
    process.stdout.write(lines ? lines + '\n' : '', () => process.exit(code));
  };
}

module.exports = { SEED_USER, SEED_ROOM, WELCOME, TIMEOUT_MS, printed, isWelcome, isAnswer, finisher };
