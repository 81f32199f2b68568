// Drives chatbot with the official `ollama` npm package through the client matrix (chat,
// streaming, tools, structured output, embeddings); prints one JSON summary line.
import { Ollama } from 'ollama'

const [host, model, key] = process.argv.slice(2)
// With API keys on, the key goes in the Authorization header, as for any Ollama server.
const client = new Ollama({ host, headers: key ? { Authorization: `Bearer ${key}` } : {} })
const options = { temperature: 0, seed: 42, num_predict: 8 }
const messages = [{ role: 'user', content: 'What is 2+2?' }]

const stream = await client.chat({ model, messages, options, stream: true })
let content = ''
let last = null
for await (const part of stream) {
  content += part.message.content
  last = part
}
const chat = await client.chat({ model, messages, options })

const toolQuestion = [{ role: 'user', content: 'What is 2+2? Use the add tool.' }]
const add = {
  type: 'function',
  function: {
    name: 'add',
    description: 'Add two integers.',
    parameters: {
      type: 'object',
      required: ['a', 'b'],
      properties: { a: { type: 'integer' }, b: { type: 'integer' } },
    },
  },
}
// Reported rather than thrown, so that the rest still runs where a model takes no tools.
let tools
try {
  const reply = await client.chat({ model, messages: toolQuestion, tools: [add], options })
  const plain = await client.chat({ model, messages: toolQuestion, options })
  tools = {
    plain_prompt_eval_count: plain.prompt_eval_count,
    prompt_eval_count: reply.prompt_eval_count,
    calls: (reply.message.tool_calls || []).map((c) => c.function.name),
  }
} catch (error) {
  tools = { error: `${error.status_code} ${error.message}` }
}

const schema = {
  type: 'object',
  properties: { answer: { type: 'integer' } },
  required: ['answer'],
}
const structured = await client.chat({
  model, messages, format: schema, options: { ...options, num_predict: 40 },
})

const embed = await client.embed({ model: 'all-minilm', input: ['hello', 'world'] })
const list = await client.list()
const show = await client.show({ model })
console.log(JSON.stringify({
  content,
  done: last.done,
  done_reason: last.done_reason,
  chat: chat.message.content,
  tools,
  structured: structured.message.content,
  embed: [embed.embeddings.length, embed.embeddings[0].length],
  models: list.models.map((m) => m.name),
  architecture: show.model_info['general.architecture'],
}))
