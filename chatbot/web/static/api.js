// Talking to chatbot's public API from the page: the key (when keys are on) on every call,
// NDJSON streams, and Server-Sent Events read with fetch() rather than EventSource, because
// EventSource cannot send the Authorization header.

const KEY = 'chatbot.key';

export class Unauthorized extends Error {
  constructor() { super('this server needs an API key'); }
}

export const key = {
  get: () => localStorage.getItem(KEY) || '',
  set: (value) => localStorage.setItem(KEY, value),
  clear: () => localStorage.removeItem(KEY),
};

export async function call(path, { method = 'GET', body, headers = {}, signal } = {}) {
  const sent = { ...headers };
  if (key.get()) sent.Authorization = `Bearer ${key.get()}`;
  if (body !== undefined) sent['Content-Type'] = 'application/json';
  const resp = await fetch(path, {
    method, headers: sent, signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401) throw new Unauthorized();
  return resp;
}

// The JSON body of a successful answer; an Error carrying the API's {"error": ...} otherwise.
export async function json(path, options) {
  const resp = await call(path, options);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(data.error || `${resp.status} ${resp.statusText}`);
  return data;
}

// A request id the page picks itself (8-64 of A-Za-z0-9._:-), so it can listen to the
// request's events before sending it. getRandomValues works on plain http too.
export function requestId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return 'web-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// The lines of a streamed body as they arrive (blank ones too when asked).
export async function* lines(resp, keepBlank = false) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, end).replace(/\r$/, '');
        buffer = buffer.slice(end + 1);
        if (keepBlank || line.trim()) yield line;
      }
    }
    if (buffer.trim()) yield buffer;
  } finally {
    reader.releaseLock();
  }
}

// The chunks of a reply sent with "resumable": true. When the connection drops, the server
// keeps the reply going for a while: ask it for the chunks after those we have, a few times.
export async function* resumableChunks(resp, { rid, signal, onRetry = () => {}, tries = 5 }) {
  let got = 0;
  for (let attempt = 0; ;) {
    try {
      for await (const line of lines(resp)) {
        attempt = 0;
        const chunk = JSON.parse(line);
        if (!chunk.done && !chunk.error) got += 1;
        yield chunk;
      }
      return;
    } catch (error) {
      if (signal?.aborted || error instanceof SyntaxError) throw error;
      for (;;) {
        if (++attempt > tries) throw error;
        onRetry(attempt);
        await new Promise((resolve) => setTimeout(resolve, 500 * attempt));
        try {
          resp = await call(`/api/requests/${encodeURIComponent(rid)}/stream?after=${got}`, { signal });
        } catch (again) {
          if (signal?.aborted || again instanceof Unauthorized) throw again;
          continue; // still offline
        }
        if (!resp.ok) throw new Error((await resp.json().catch(() => ({}))).error || resp.statusText);
        break;
      }
    }
  }
}

// SSE in flask-sse's format: {type, data} per event, data parsed as JSON; comments come as
// {type: 'comment'} (the server's first, ": subscribed", says nothing can be missed now).
export async function* events(resp) {
  let type = 'message';
  let data = [];
  for await (const line of lines(resp, true)) {
    if (line.startsWith(':')) {
      yield { type: 'comment', data: line.slice(1).trim() };
    } else if (line === '') {
      if (data.length) {
        let parsed = data.join('\n');
        try { parsed = JSON.parse(parsed); } catch { /* plain text data */ }
        yield { type, data: parsed };
      }
      type = 'message';
      data = [];
    } else {
      const [field, ...rest] = line.split(':');
      const value = rest.join(':').replace(/^ /, '');
      if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }
  }
}
