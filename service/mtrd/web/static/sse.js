// Server-sent events read from a streaming fetch (an EventSource cannot send a token):
// a parser of the text/event-stream format, fed the text as it arrives.

/** Parses text/event-stream text into events ({id, event, data}); feed it chunks. */
export class SseParser {
  constructor() {
    this.buffer = "";
    this.reset();
    this.lastId = null;
  }

  reset() {
    this.event = "";
    this.data = [];
  }

  /** The events completed by this chunk, in order. */
  feed(chunk) {
    this.buffer += chunk;
    const events = [];
    // A line ends at CRLF, LF or CR; a CR at the very end may be half of a CRLF.
    const pattern = /\r\n|\n|\r(?!$)/g;
    let start = 0;
    let match;
    while ((match = pattern.exec(this.buffer)) !== null) {
      const line = this.buffer.slice(start, match.index);
      start = match.index + match[0].length;
      const event = this.line(line);
      if (event) events.push(event);
    }
    this.buffer = this.buffer.slice(start);
    return events;
  }

  line(line) {
    if (line === "") {
      const event = this.data.length
        ? { id: this.lastId, event: this.event || "message", data: this.data.join("\n") }
        : null;
      this.reset();
      return event;
    }
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.lastId = value;
    return null;
  }
}
