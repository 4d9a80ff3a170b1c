// Publish one coding request to coderd with amqplib (Node.js) and print its reply.
//
//     cd examples && npm install && [CODERD_REQUEST_QUEUE=coding.requests] node producer_amqplib.js [AMQP_URL]
'use strict';
const amqp = require('amqplib');
const { randomUUID } = require('crypto');

const url = process.argv[2] || 'amqp://guest:guest@127.0.0.1:5672/';
const requestQueue = process.env.CODERD_REQUEST_QUEUE || 'coding.requests';

async function main() {
  const connection = await amqp.connect(url);
  const channel = await connection.createConfirmChannel(); // the broker confirms each publish
  const { queue: replyQueue } = await channel.assertQueue('', { exclusive: true }); // ours alone
  const correlationId = randomUUID();
  const request = {
    topic: 'anzsco',
    numberOfSuggestions: 3,
    records: [
      { recordId: '1', occp_text: 'software developer', tasks_text: 'writing code and unit tests' },
      { recordId: '2', occp_text: 'Paramedic', tasks_text: 'respond to emergencies' },
    ],
  };
  const reply = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no reply within 120 s: is coderd running?')), 120000);
    channel.consume(replyQueue, (message) => {
      // Replies may repeat (at-least-once delivery): match, and de-duplicate, by correlation_id.
      if (message && message.properties.correlationId === correlationId) {
        clearTimeout(timer);
        resolve(JSON.parse(message.content.toString('utf8')));
      }
    }, { noAck: true });
  });
  channel.on('return', () => { // mandatory: the broker hands back a request it cannot route
    console.error(`no queue '${requestQueue}': is coderd running?`);
    process.exit(1);
  });
  channel.publish('', requestQueue, Buffer.from(JSON.stringify(request)), { // '' = the default exchange
    replyTo: replyQueue, correlationId, contentType: 'application/json', persistent: true, mandatory: true,
  });
  await channel.waitForConfirms();
  console.log(JSON.stringify(await reply, null, 2));
  await connection.close();
}

main().catch((error) => {
  console.error(error.message || error);
  process.exit(1);
});
