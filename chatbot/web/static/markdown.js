// A tiny Markdown renderer for model output: fenced code, inline code, bold, italics, http(s)
// links, lists, headings and paragraphs. Safe by construction: every piece of the text is
// HTML-escaped before it is wrapped in one of the few tags below, and the only attribute
// taking text is a link's href, which must start with http:// or https://.

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const FENCE = /^\s*(```|~~~)\s*([\w+#.-]*)\s*$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*\d{1,9}[.)]\s+(.*)$/;
const HEADING = /^(#{1,6})\s+(.*?)\s*#*\s*$/;

export function render(markdown) {
  const lines = String(markdown).replace(/\u0000/g, '').replace(/\r\n?/g, '\n').split('\n');
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) { // a code block runs to its closing fence, or to the end while it streams
      const code = [];
      for (i++; i < lines.length && !lines[i].trim().startsWith(fence[1]); i++) code.push(lines[i]);
      i++;
      const lang = fence[2] ? ` class="language-${escapeHtml(fence[2])}"` : '';
      out.push(`<pre><code${lang}>${escapeHtml(code.join('\n'))}</code></pre>`);
    } else if (!line.trim()) {
      i++;
    } else if (HEADING.test(line)) {
      const [, marks, text] = line.match(HEADING);
      const level = Math.min(marks.length + 2, 6); // h3..h6: a reply is not a page
      out.push(`<h${level}>${inline(text)}</h${level}>`);
      i++;
    } else if (BULLET.test(line) || NUMBERED.test(line)) {
      const pattern = BULLET.test(line) ? BULLET : NUMBERED;
      const items = [];
      for (; i < lines.length && lines[i].trim(); i++) {
        const item = lines[i].match(pattern);
        if (item) items.push(item[1]);
        else if (/^\s+/.test(lines[i]) && items.length) items[items.length - 1] += '\n' + lines[i].trim();
        else break;
      }
      const tag = pattern === BULLET ? 'ul' : 'ol';
      out.push(`<${tag}>${items.map((t) => `<li>${inline(t)}</li>`).join('')}</${tag}>`);
    } else {
      const para = [];
      for (; i < lines.length && lines[i].trim() && !startsBlock(lines[i]); i++) para.push(lines[i]);
      out.push(`<p>${inline(para.join('\n'))}</p>`);
    }
  }
  return out.join('\n');
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || BULLET.test(line) || NUMBERED.test(line);
}

// Code spans and links are rendered first and kept aside behind \u0000n\u0000 markers, so
// that the emphasis rules never reach into them (the input has had its \u0000 removed).
function inline(text) {
  const kept = [];
  const keep = (html) => `\u0000${kept.push(html) - 1}\u0000`;
  let s = text.replace(/`([^`\n]+)`/g, (_, code) => keep(`<code>${escapeHtml(code)}</code>`));
  s = s.replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s()<>"'\u0000]+)\)/g, (_, label, url) =>
    keep(`<a href="${escapeHtml(url)}" rel="noopener noreferrer nofollow" target="_blank">` +
      `${emphasis(escapeHtml(label))}</a>`));
  s = emphasis(escapeHtml(s)).replace(/\n/g, '<br>');
  const restore = (html) => html.replace(/\u0000(\d+)\u0000/g, (_, n) => restore(kept[n]));
  return restore(s);
}

function emphasis(html) {
  return html
    .replace(/\*\*(?=\S)([^\n]*?\S)\*\*/g, '<strong>$1</strong>')
    .replace(/(^|[^*\w])\*([^\s*](?:[^*\n]*?[^\s*])?)\*(?![*\w])/g, '$1<em>$2</em>')
    .replace(/(^|[^_\w])_([^\s_](?:[^_\n]*?[^\s_])?)_(?![_\w])/g, '$1<em>$2</em>');
}
