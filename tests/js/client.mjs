// Drives chatbot with the official `ollama` npm package; prints one JSON summary line.
import { Ollama } from 'ollama'

const [host, model, key] = process.argv.slice(2)
// With API keys on, the key goes in the Authorization header, as for any Ollama server.
const client = new Ollama({ host, headers: key ? { Authorization: `Bearer ${key}` } : {} })
const stream = await client.chat({
  model,
  messages: [{ role: 'user', content: 'What is 2+2?' }],
  options: { temperature: 0, seed: 42, num_predict: 8 },
  stream: true,
})
let content = ''
let last = null
for await (const part of stream) {
  content += part.message.content
  last = part
}
const list = await client.list()
const show = await client.show({ model })
console.log(JSON.stringify({
  content,
  done: last.done,
  done_reason: last.done_reason,
  models: list.models.map((m) => m.name),
  architecture: show.model_info['general.architecture'],
}))
