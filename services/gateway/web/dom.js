// The few DOM helpers both pages use: an element by id, and an element built with its
// properties and children (text goes in as text, never as HTML).

/** The element with this id. */
export const $ = (id) => document.getElementById(id);

/** A new `tag` element with `props` assigned and `children` appended (null ones skipped). */
export const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
};
