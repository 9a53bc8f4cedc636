// Small DOM helpers shared by the views. Text always goes in as textContent.

export const $ = (id) => document.getElementById(id);

/** A new element with its text (as text) and class. */
export function element(name, text, className) {
  const made = document.createElement(name);
  if (text !== undefined) made.textContent = text;
  if (className) made.className = className;
  return made;
}

/** A link to a page address, its label as text. */
export function link(href, text) {
  const anchor = element("a", text);
  anchor.href = href;
  return anchor;
}

/** Show one of the page's views and hide the others (none: `null`). */
export function show(section) {
  for (const id of ["auth", "start", "trace", "monitor"]) $(id).hidden = id !== section;
}
