// Package webex is a small client for the Webex Messages API and the
// synchronous send helpers built on it.
//
// [Client] creates messages (JSON, or multipart/form-data streamed from a
// local [File] when one is attached), reads, lists (paged, newest first) and
// deletes them, and checks a token with GET /people/me. Successful answers
// carry a [Response] (status, tracking id, rate-limit headers). Webex's error
// answers become [*APIError], which classifies itself for pkg/retrypolicy:
// 429 is rate-limited with its Retry-After, 408, 423 and every 5xx transient,
// other statuses permanent. [ErrUnauthorized] matches a rejected token. A 2xx
// answer whose body cannot be read gives [*UnconfirmedError]: the message
// exists and must not be posted again.
//
// [Message.Validate] enforces Webex's rules before any request, as
// [*ValidationError]s that name the field and the limit; the worker and the
// producers share it (the simulator in webextest checks the same rules with
// its own code).
//
// # What Webex renders
//
// Webex renders a subset of markdown in Message.Markdown (its "Formatting
// Messages" guide): **bold**, *italic*, [links](https://…), ordered and
// unordered lists, > block quotes, `inline code`, fenced code blocks
// (monospace in every client, so aligned columns stay aligned), and mentions
// (<@personEmail:ana@example.com>, <@personId:…|Ana>, <@all>). A blank line
// separates paragraphs; a single line break needs two trailing spaces.
// Tables, raw HTML and images are not rendered: the Webex app shows the pipes,
// tags and ![alt](url) as typed. Put tabular data in a fenced code block with
// padded columns, or in a card. Message.Text is the plain-text fallback for
// clients and notifications that do not render markdown, so it should read well
// on its own. The simulator in webextest marks messages with markdown Webex
// shows literally (webextest.FindLiterals) and logs a warning.
//
// The helpers [Client.Send], [Client.SendFiles], [Client.SendCard] and
// [Client.SafeSend] are the Go form of the old send_message,
// send_message_with_files, send_card and safe_send_message: synchronous, with
// in-process retry (the Webex preset of pkg/retrypolicy by default) within
// [DefaultWaitBudget] of waiting. For delivery that survives a crash, enqueue
// with pkg/tasks instead.
//
// The client never retries on its own and never follows redirects: a POST
// that timed out may have been accepted, and retrying inside the client would
// hide the duplicate risk that callers (and courier's dedup records) must own.
package webex
