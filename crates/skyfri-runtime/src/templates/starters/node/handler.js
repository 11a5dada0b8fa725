'use strict'

// Answers one HTTP call. `event` has method, path, query, headers and body;
// `context` sets the answer: status(), headers(), then succeed(body) or fail(error).
// Add packages to package.json: `skyfri build` installs them.
module.exports = async (event, context) => {
  const body = typeof event.body === 'string' ? event.body : JSON.stringify(event.body || '')
  return context
    .status(200)
    .headers({ 'Content-Type': 'application/json' })
    .succeed({ method: event.method, path: event.path, received: body })
}
