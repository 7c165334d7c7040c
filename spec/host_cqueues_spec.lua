-- fluxalock under a cqueues event loop (configure{host = "cqueues"}): every
-- network wait and backoff pause yields to the loop.  The scenarios (200
-- coroutines on 10 keys with a heartbeat, a plain process on the same keys,
-- Redis killed and restarted) are in spec/support/hosts.lua, shared with luv.
require("support.hosts").spec("cqueues",
  "cannot wait outside a cqueues coroutine under host 'cqueues'", _ENV)
