// DOM helpers: every piece of text goes in through textContent, never as markup, so text that
// came from a job (a class name, an error message) can never become an element or a script.

const SVG_NS = "http://www.w3.org/2000/svg";

/** Append children (nodes, or strings as text nodes) to an element; null/undefined are skipped. */
function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Set attributes; `text` sets textContent, functions under `on*` become listeners. */
function assign(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else node.setAttribute(name, String(value));
  }
  return node;
}

/** An HTML element. */
export function el(tag, attrs, ...children) {
  return append(assign(document.createElement(tag), attrs), children);
}

/** An SVG element. */
export function svg(tag, attrs, ...children) {
  return append(assign(document.createElementNS(SVG_NS, tag), attrs), children);
}

/** Replace an element's children. */
export function replace(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}
