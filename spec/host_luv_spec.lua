-- fluxalock under a luv (libuv) event loop (configure{host = "luv"}): every
-- network wait and backoff pause yields to the loop.  The scenarios (200
-- coroutines on 10 keys with a heartbeat, a plain process on the same keys,
-- Redis killed and restarted) are in spec/support/hosts.lua, shared with
-- cqueues.
require("support.hosts").spec("luv",
  "cannot wait outside a coroutine under host 'luv'", _ENV)
