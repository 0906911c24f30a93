// A small markdown renderer that builds DOM nodes and never parses HTML: every piece of text is a
// text node, so an answer cannot inject markup, scripts or handlers whatever it holds. It knows
// what the assistant writes: headings, paragraphs, lists, quotes, fenced code, rules, and inline
// code, bold, italics and links (http, https and mailto only).

const SAFE_URL = /^(https?:|mailto:)/i;
const INLINE = /(`[^`]+`)|(\*\*[^*]+\*\*|__[^_]+__)|(\*[^*\s][^*]*\*|_[^_\s][^_]*_)|(\[[^\]]+\]\([^)\s]+\))/;

function element(tag, children = []) {
  const node = document.createElement(tag);
  for (const child of children) node.append(child);
  return node;
}

export function inline(text) {
  const nodes = [];
  let rest = text;
  while (rest) {
    const match = INLINE.exec(rest);
    if (!match) {
      nodes.push(document.createTextNode(rest));
      break;
    }
    if (match.index) nodes.push(document.createTextNode(rest.slice(0, match.index)));
    const [token] = match;
    if (match[1]) {
      const code = element('code');
      code.textContent = token.slice(1, -1);
      nodes.push(code);
    } else if (match[2]) {
      nodes.push(element('strong', inline(token.slice(2, -2))));
    } else if (match[3]) {
      nodes.push(element('em', inline(token.slice(1, -1))));
    } else {
      const label = token.slice(1, token.indexOf(']('));
      const href = token.slice(token.indexOf('](') + 2, -1);
      if (SAFE_URL.test(href)) {
        const link = element('a', inline(label));
        link.href = href;
        link.rel = 'noopener noreferrer nofollow';
        link.target = '_blank';
        nodes.push(link);
      } else {
        nodes.push(document.createTextNode(token));
      }
    }
    rest = rest.slice(match.index + token.length);
  }
  return nodes;
}

const BLOCK_START = /^(#{1,6}\s|```|>\s?|[-*+]\s|\d+[.)]\s|(-{3,}|\*{3,}|_{3,})\s*$)/;

function list(lines, start, ordered) {
  const pattern = ordered ? /^\s*\d+[.)]\s+(.*)$/ : /^\s*[-*+]\s+(.*)$/;
  const node = element(ordered ? 'ol' : 'ul');
  let index = start;
  while (index < lines.length) {
    const match = pattern.exec(lines[index]);
    if (!match) break;
    node.append(element('li', inline(match[1])));
    index += 1;
  }
  return [node, index];
}

export function render(source) {
  const fragment = document.createDocumentFragment();
  const lines = source.replace(/\r\n?/g, '\n').split('\n');
  let index = 0;
  while (index < lines.length) {
    const line = lines[index];
    if (!line.trim()) {
      index += 1;
    } else if (line.startsWith('```')) {
      const body = [];
      index += 1;
      while (index < lines.length && !lines[index].startsWith('```')) body.push(lines[index++]);
      index += 1; // the closing fence (or the end of a text still streaming)
      const code = element('code');
      code.textContent = body.join('\n');
      fragment.append(element('pre', [code]));
    } else if (/^#{1,6}\s/.test(line)) {
      const level = line.indexOf(' ');
      fragment.append(element(`h${Math.min(level + 2, 6)}`, inline(line.slice(level + 1))));
      index += 1;
    } else if (/^(-{3,}|\*{3,}|_{3,})\s*$/.test(line)) {
      fragment.append(element('hr'));
      index += 1;
    } else if (/^\s*[-*+]\s/.test(line) || /^\s*\d+[.)]\s/.test(line)) {
      const [node, next] = list(lines, index, /^\s*\d/.test(line));
      fragment.append(node);
      index = next;
    } else if (line.startsWith('>')) {
      const quoted = [];
      while (index < lines.length && lines[index].startsWith('>')) {
        quoted.push(lines[index++].replace(/^>\s?/, ''));
      }
      fragment.append(element('blockquote', [render(quoted.join('\n'))]));
    } else {
      const paragraph = [line];
      index += 1;
      while (index < lines.length && lines[index].trim() && !BLOCK_START.test(lines[index])) {
        paragraph.push(lines[index++]);
      }
      const node = element('p');
      paragraph.forEach((text, position) => {
        if (position) node.append(element('br'));
        node.append(...inline(text));
      });
      fragment.append(node);
    }
  }
  return fragment;
}
