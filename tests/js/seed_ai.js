// The seed API document's AI examples, run unchanged in Node against a real server.
//
//   PRODUCTFLO_TEST_ORIGIN=ws://127.0.0.1:PORT node tests/js/seed_ai.js
//
// Between the BEGIN/END seed markers, copied verbatim from the seed: "AI Assistant Interaction",
// "Document Generation Request" and "Event Handling Example". The socket is the seed's standard
// (anonymous) one, made as in seed_native.js (the `ws` package, the browser's user_id cookie). The
// handler functions the seed's switch calls are the harness's: each prints its name and the
// envelope. It exits 0 once haitch's chat answer, the document and the notification that it is
// ready have been handled, and non-zero on a timeout or an error envelope. Each console.log call is
// printed on stdout as one JSON array per line.

'use strict';

const { SEED_USER, TIMEOUT_MS, printed, finisher } = require('./harness');

const finish = finisher('seed_ai');
const NodeWebSocket = require('ws');

function handler(name) {
  return (data) => console.log(name, data);
}
const displayChatMessage = handler('displayChatMessage');
const showIdeaResults = handler('showIdeaResults');
const handleDocumentGeneration = handler('handleDocumentGeneration');
const processEngineeringResponse = handler('processEngineeringResponse');
const handleSystemMessage = handler('handleSystemMessage');
const showNotification = handler('showNotification');
const handleError = handler('handleError');

function handled(name, predicate) {
  return printed.some((args) => args[0] === name && predicate(args[1]));
}

function done() {
  return (
    handled('displayChatMessage', (d) => d.status === 'success' && d.data.sender === 'haitch') &&
    handled('handleDocumentGeneration', (d) => d.status === 'success' && d.data.document) &&
    handled('showNotification', (d) => d.data.details.kind === 'document')
  );
}

const origin = process.env.PRODUCTFLO_TEST_ORIGIN;
const socket = new NodeWebSocket(`${origin}/ws`, { headers: { Cookie: `user_id=${SEED_USER}` } });
const timer = setTimeout(() => finish(1, `timed out after ${TIMEOUT_MS} ms`), TIMEOUT_MS);

socket.onopen = () => {
// ---- BEGIN seed: AI Assistant Interaction ----
// Send a message to the AI assistant
socket.send(JSON.stringify({
  code: "haitch_chat",
  user_id: "user-123",
  room_id: "product-456",
  data: {
    message: "What materials would be best for a waterproof enclosure?",
    sender: "user-123"
  }
}));
// ---- END seed ----

// ---- BEGIN seed: Document Generation Request ----
// Request document generation
socket.send(JSON.stringify({
  code: "documentation",
  user_id: "user-123",
  room_id: "product-456",
  data: {
    message: "Generate a technical specification document for our thermostat",
    sender: "user-123",
    attached_files: ["requirements.pdf"]
  }
}));
// ---- END seed ----
};

// ---- BEGIN seed: Event Handling Example ----
// Set up event handling for different message types
socket.onmessage = (event) => {
  const data = JSON.parse(event.data);
  
  switch(data.code) {
    case "chat_response":
      displayChatMessage(data);
      break;
    
    case "idea_response":
      showIdeaResults(data);
      break;
    
    case "documentation_response":
      handleDocumentGeneration(data);
      break;
    
    case "engineering_response":
      processEngineeringResponse(data);
      break;
    
    case "system":
      handleSystemMessage(data);
      break;
    
    case "notification":
      showNotification(data);
      break;
      
    case "error":
      handleError(data);
      break;
      
    default:
      console.log("Unhandled message type:", data);
  }
};
// ---- END seed ----

socket.addEventListener('message', (event) => {
  const data = JSON.parse(event.data);
  if (data.status === 'error') {
    clearTimeout(timer);
    return finish(1, `error envelope: ${event.data}`);
  }
  if (done()) {
    clearTimeout(timer);
    socket.close(1000);
    finish(0);
  }
});
