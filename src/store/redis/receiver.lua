#!lua name=cuebox_v6
-- The Redis Functions library of cuebox: every state transition of one receiver, each one
-- atomic because Redis runs a function whole. The rules are written out in src/store/mod.rs and
-- once as a pure machine in src/store/machine.rs, which the embedded store runs;
-- tests/api/differential.rs holds this library to that machine, and tests/api/conformance.rs
-- holds both stores to the rules.
--
-- Loaded once per Redis (FUNCTION LOAD), so the helpers below are made once, not on every call
-- as a script's are. The library and every function name carry the version (v5: key layout 5,
-- history and the started mark): nodes of two library versions over one layout can share a
-- Redis during a rolling deploy, each calling its own.
--
-- What a call costs Redis (measured in docs/benchmarks.md): each redis.call 5 to 7k
-- instructions, and 2.3k more for every hash field it reads; each argument and each element of
-- the answer about 1k; each conversion between a number and a string about 2k (tonumber is
-- strtod, and a number handed on as text is printed); and Lua's own steps, a table access or a
-- function call a few hundred each. So the receiver is one hash of four fields, with the alert in
-- flight packed into one of them; each call reads what it needs in one HMGET, keeps fields as
-- the strings Redis gave until arithmetic needs them, parses the flight only when it must, and
-- writes back in one HSET.
--
-- Layout 5, every key sharing the receiver's hash tag:
-- KEYS[1] receiver hash    seq      changes of the alert in flight, counted
--                          flight   "<id> sent <duration_ms> <attempt> <start deadline,
--                                   ms>|<trail>": whether it started is its started mark's
--                                   (below; layout 4 wrote "<id> started ... <deadline>|<trail>",
--                                   still read; no "|" and trail in a flight of layout 3; "|",
--                                   not a space, so the trail is found without a pattern)
--                          alert    the alert in flight, as its queue entry
--                          live     live widgets, cached: "<until, ms> <the node holding them
--                                   all, or *>", followed by " quiet" while all are off air,
--                                   or "0" for none (see presence())
--                          hold     "p" while the streamer has paused the receiver, followed by
--                                   how many alerts wait in the priority lane (KEYS[4]) when
--                                   any do, then "h", how many are held for approval and, if any
--                                   approves itself, ":" and the soonest time one does; then,
--                                   while some node has a dock open on the receiver's feed, "d"
--                                   and until when (see docks()): "p", "3", "p3", "h2",
--                                   "p3h1:1760000000000d1760000030000"; absent for none of these
--                                   (one field, not four, since every call reads it: see
--                                   read_hold())
--                          wait     the durations of the waiting alerts (both lanes, not the
--                                   held ones), ms, so a publish can say how soon its alert
--                                   shows without reading the queue (see add_wait()); absent
--                                   for none. Library v5 kept none: a receiver it left alerts
--                                   waiting in counts short until its queue empties, when a
--                                   publish sets the sum afresh.
-- KEYS[2] queue    list    waiting alerts, head first, each "<id> <duration_ms> <times sent>
--                          <trail> <alert json>" (no trail in an entry of layout 3: the JSON
--                          follows the times sent, and always starts with '{')
-- KEYS[3] ids      set     every alert queued or in flight, so the same id is never queued
--                          twice (a set, not a hash: Redis keeps a hash of short values as a
--                          list it scans, up to 512 entries by default, and this one has an
--                          entry per waiting alert)
-- KEYS[4] priority list    the priority lane, entries as in the queue: high-priority alerts, and
--                          alerts put back at the head. It goes out before the queue. Its
--                          length is in the receiver's `hold`, so dispatch knows which lane to pop
--                          without asking.
-- KEYS[5] widgets  hash    node id -> "<widgets> <live until, ms>[ <of them off air>[ <previews
--                          besides>]]" (see
--                          widgets()), given only to the functions
--                          that always read it (widgets, sweep, status); the others find it from
--                          KEYS[1] on the rare call that must count afresh (widgets_key()), since
--                          each key passed costs every call about 1k instructions
--   or    idempotency key (publish with a key only)
-- Not among KEYS: <r>:history, the alerts that left the receiver for good, newest first, each as
-- two elements: "<status> <trail>", then its queue entry as it was (see remember()); and
-- <r>:held, the alerts
-- held for approval, oldest first, each "<approve at, ms, or -> <p|n, its lane> <queue entry>"
-- (see release()); and <r>:started:<id>:<attempt>, the started mark of that send of the alert in
-- flight, "<started at> <started at + ack grace>" (ms). A widget's start is the most frequent
-- call, so it is no function here: the node writes the mark with one SET NX (only the first
-- start of a send counts), and this library reads it where the alert's phase matters and takes
-- it when the alert leaves flight (see marked()). All are found from KEYS[1]: they are read only
-- on the calls that use them, and each key passed costs every call.
--
-- A trail is what happened to an alert, mark after mark, each a letter and a time in ms, with
-- ':' and the attempt after a send or a requeue: "r<received>s<sent>:1t<started>d<done>" (the
-- letters are src/store/history.rs's). It rides in the queue entry while the alert waits and in
-- the packed flight while it is in flight, growing by one concatenation per mark, and ends in
-- the history entry; nothing else stores it. It is found in those strings with plain searches,
-- never a pattern: Lua's patterns cost some hundred instructions a character.
--
-- ARGV[1] calling node   ARGV[2] the time in ms
-- ARGV[3] PUBLISH, or SPUBLISH on a Redis Cluster (the events channel shares the receiver's slot)
-- ARGV[4] the deadline of an alert sent now (the time plus the start timeout), in ms
-- ARGV[5..] the function's own arguments
--
-- The time is Redis's clock as the calling node reads it (the node keeps its offset to Redis's
-- TIME, measured with every heartbeat), so every node agrees on every deadline without a TIME
-- call in every function; tests pass a clock of their own.
--
-- Layout 1 (library v1) kept the state as six fields in `<r>:state`, and each queued alert's
-- value in `<r>:alerts` with only its id in the queue. Nothing is converted in bulk (a cluster's
-- receivers are beyond the reach of one script): the first call that finds a receiver without
-- its hash takes it over, converting its state, its queue and its ids in one pass
-- (read_layout_1()). status() only reads, and reads layout 1 as it is.
--
-- Every answer is a tagged array: its first element names its kind ('snapshot', 'accepted',
-- 'duplicate', 'full', 'too_many', 'status'), so a new kind has room and no meaning rides on an
-- array's length. Every function but status answers with a snapshot (see snapshot()), alone or
-- inside another kind. When the
-- call moved the receiver's seq and another node has live widgets, the snapshot is also published
-- on the receiver's events channel, as a line of the same fields that starts with its kind
-- ('snapshot', or 'skip' and the skipped id when the call skipped an alert) and the calling node,
-- with the time left to the deadline in place of the deadline, and 1 or 0 for whether some node
-- has a dock open before the alert's entry (a node marks a start with the last it heard).
-- A rotated token is told there too: 'rotated', the calling node, and which token.

-- Numbers past 1e14 (seq) must not be written in Lua's exponent form.
local function int(n)
  return string.format('%d', n)
end

-- A field as Redis takes it: a string read from Redis goes back as it came.
local function str(v)
  if type(v) == 'string' then return v end
  return int(v)
end

-- One call's context, filled afresh by each call (Redis runs one function at a time, and making
-- new tables on every call costs more than filling one): its keys and arguments, the clock, and
-- the receiver's fields. While `packed` holds the flight as read, its fields (id, phase,
-- duration, attempt, deadline) are not parsed yet; see flight(). A field that holds nothing holds
-- false, so the table keeps one shape from call to call.
local c = {}

-- Parses the alert in flight, if there is one and it is not parsed yet; answers its id. Whether
-- a sent alert has started is not in the flight but in its started mark (see marked()): until
-- that is looked up, `marked` is 'unknown'.
local function flight(c)
  if c.packed then
    c.id, c.phase, c.duration, c.attempt, c.deadline, c.trail = string.match(c.packed,
      '^(%S+) (%a+) (%d+) (%d+) (%d+)|?(%S*)$')
    c.packed = false
    -- A flight of layout 4 says 'started' itself, its deadline and trail already moved on.
    if c.phase == 'sent' then c.marked = 'unknown' else c.marked = 'none' end
  end
  return c.id
end

-- The key of the started mark of alert `id` sent for the `attempt`th time (see the layout), from
-- the receiver's key.
local function mark_key(receiver, id, attempt)
  return string.sub(receiver, 1, -9) .. 'started:' .. id .. ':' .. attempt -- it ends in 'receiver'
end

-- The time a started mark "<started at> <started at + ack grace>" says the alert started.
local function started_at(mark)
  local space = string.find(mark, ' ', 1, true)
  if not space then return nil end
  return string.sub(mark, 1, space - 1), string.sub(mark, space + 1)
end

-- Looks up the started mark of the alert in flight, once a call: if it has one, the alert is
-- started, due its start plus the ack grace plus its duration, and its trail gains the 't' mark.
-- With `take` (the alert leaves flight) the mark is removed too.
local function marked(c, take)
  if not flight(c) then return end
  if c.marked == 'unknown' then
    local mark = redis.call(take and 'GETDEL' or 'GET', mark_key(c.keys[1], c.id, c.attempt))
    c.marked = 'none'
    if mark then
      local at, graced = started_at(mark)
      if at then
        c.phase, c.trail, c.started_at = 'started', c.trail .. 't' .. at, at
        c.deadline = tonumber(graced) + tonumber(c.duration)
      end
      if not take then c.marked = 'read' end
    end
  elseif take and c.marked == 'read' then
    redis.call('DEL', mark_key(c.keys[1], c.id, c.attempt))
    c.marked = 'none'
  end
end

-- The in-flight alert's queue entry, read when an answer needs it.
local function flight_entry(c)
  if not c.alert_read and c.id then
    c.alert_read = true
    c.alert = redis.call('HGET', c.keys[1], 'alert')
  end
  return c.alert
end

-- A receiver this library has not written yet, read from what layout 1 left: its state in
-- `<r>:state`, its alerts' values in `<r>:alerts`. Those two keys are not among KEYS because only
-- this first call uses them; they share the receiver's hash tag, and so its slot. With `convert`,
-- the queue and the ids are rewritten in layout 2 and both keys removed, once, in time linear in
-- the queue; its seq and its alert in flight are written by this call's save(). Without (status),
-- it is only read.
local function read_layout_1(c, convert)
  local state = string.gsub(c.keys[1], 'receiver$', 'state')
  local alerts = string.gsub(c.keys[1], 'receiver$', 'alerts')
  local f = redis.call('HMGET', state, 'seq', 'id', 'attempt', 'phase', 'deadline', 'duration')
  c.seq = f[1] or '0'
  if f[2] then
    local value = redis.call('HGET', alerts, f[2])
    c.id, c.attempt, c.phase, c.deadline, c.duration = f[2], f[3], f[4], f[5], f[6]
    c.trail = ''
    c.alert, c.alert_read = value and (f[2] .. ' ' .. value), true
    c.had_flight, c.flight_changed = true, true
  end
  c.seq_before, c.dirty = c.seq, true
  if not convert then return end
  local queued = redis.call('LRANGE', c.keys[2], 0, -1)
  if #queued > 0 then
    -- In chunks: Lua's unpack() takes a few thousand values at most.
    local values = {}
    for i = 1, #queued, 1000 do
      local got = redis.call('HMGET', alerts, unpack(queued, i, math.min(i + 999, #queued)))
      for j = 1, #got do values[i + j - 1] = got[j] end
    end
    local entries, ids = {}, {}
    for i = 1, #queued do
      local id = string.match(queued[i], '^%S+')
      if id ~= queued[i] then
        -- Already an entry of layout 2 (this receiver's hash was lost, not its queue): kept.
        entries[#entries + 1], ids[#ids + 1] = queued[i], id
      elseif values[i] then
        entries[#entries + 1], ids[#ids + 1] = id .. ' ' .. values[i], id
      end
      -- An id without its value cannot be shown; layout 1 skipped it too.
    end
    redis.call('DEL', c.keys[2])
    for i = 1, #entries, 1000 do
      redis.call('RPUSH', c.keys[2], unpack(entries, i, math.min(i + 999, #entries)))
    end
    for i = 1, #ids, 1000 do
      redis.call('SADD', c.keys[3], unpack(ids, i, math.min(i + 999, #ids)))
    end
  end
  if c.id then redis.call('SADD', c.keys[3], c.id) end
  redis.call('DEL', state, alerts)
end

-- The receiver's `hold` field: c.paused ('1' or false) and c.ahead (the priority lane's length
-- as a string, or false for none). Absent, as it is for a receiver that never used either, it
-- costs nothing to read.
local function read_hold(c, hold)
  c.paused, c.ahead, c.held, c.due, c.docks = false, false, false, false, false
  if not hold then return end
  if string.byte(hold, 1) == 112 then -- 'p'
    c.paused = '1'
    hold = string.sub(hold, 2)
  end
  local d = string.find(hold, 'd', 1, true)
  if d then
    c.docks = tonumber(string.sub(hold, d + 1))
    hold = string.sub(hold, 1, d - 1)
  end
  local h = string.find(hold, 'h', 1, true)
  if h then
    local held, due = string.match(hold, '^(%d+):?(%d*)$', h + 1)
    c.held = tonumber(held)
    if due and due ~= '' then c.due = tonumber(due) end
    hold = string.sub(hold, 1, h - 1)
  end
  if hold ~= '' and hold ~= '0' then c.ahead = hold end
end

-- The `hold` field as c says it.
local function hold_field(c)
  local hold = ''
  if c.paused then hold = 'p' end
  if c.ahead and c.ahead ~= '0' then hold = hold .. c.ahead end
  if c.held and c.held > 0 then
    hold = hold .. 'h' .. int(c.held)
    if c.due then hold = hold .. ':' .. int(c.due) end
  end
  if c.docks and c.docks > c.now then hold = hold .. 'd' .. int(c.docks) end
  return hold
end

local function write_hold(c)
  local hold = hold_field(c)
  if hold == '' then
    redis.call('HDEL', c.keys[1], 'hold')
  else
    redis.call('HSET', c.keys[1], 'hold', hold)
  end
  c.hold_changed = false
end

-- The receiver's fields a call reads, in one HMGET; `with_alert` reads the entry of the alert in
-- flight too, for a call that most often needs it.
local function read(keys, with_alert)
  if with_alert then return redis.call('HMGET', keys[1], 'seq', 'flight', 'live', 'hold', 'alert') end
  return redis.call('HMGET', keys[1], 'seq', 'flight', 'live', 'hold')
end

-- Reads the receiver (or takes `f`, its fields as read() read them) into the call context.
local function open(keys, args, with_alert, f)
  f = f or read(keys, with_alert)
  c.keys, c.args, c.node, c.now = keys, args, args[1], tonumber(args[2])
  c.seq, c.seq_before, c.packed, c.live = f[1], f[1], f[2], f[3]
  read_hold(c, f[4])
  c.hold_changed, c.skipped, c.widgets_key = false, false, false
  c.id, c.phase, c.duration, c.attempt, c.deadline, c.trail = false, false, false, false, false,
    false
  c.alert, c.alert_read, c.keep, c.marked, c.started_at = false, false, false, false, false
  if with_alert then c.alert, c.alert_read = f[5], true end
  c.had_flight, c.flight_changed, c.dirty = f[2] ~= false, false, false
  c.live_known, c.live_any, c.live_others, c.recounted = false, false, false, false
  c.on_air, c.on_air_count, c.previews = false, 0, 0
  -- What this call did, in order, for the caller's metrics: sent resent requeued done expired.
  c.happened = ''
  return c, not f[1] and not f[2]
end

local release -- below, with the lanes

-- Opens a call that may write: a receiver still in layout 1 is taken over first, and held alerts
-- whose time has come are approved before anything else happens.
local function open_to_write(keys, args, with_alert, f)
  local c, unwritten = open(keys, args, with_alert, f)
  if unwritten then read_layout_1(c, true) end
  if c.due and c.due <= c.now then release(c) end
  return c
end

-- {'snapshot', seq, id, attempt, started (0 or 1), deadline (ms), alert entry, events
-- [, skipped id [, ms until a held alert approves itself [, 1 while some node has a dock]]]}; id
-- and the alert are false when free, and the alert is false unless asked for. Each optional
-- element (or false in its place) only when it or one after it is there: most answers stay short.
local function snapshot(c, with_alert)
  local seq = c.seq or 0
  local snap
  if not flight(c) then
    snap = {'snapshot', seq, false, 0, 0, 0, false, c.happened}
  else
    local entry = false
    if with_alert then entry = flight_entry(c) or false end
    marked(c)
    local started = 0
    if c.phase == 'started' then started = 1 end
    -- The deadline as it is held (the node subtracts its time): no conversion here.
    snap = {'snapshot', seq, c.id, c.attempt, started, c.deadline, entry, c.happened}
  end
  if c.skipped then snap[9] = c.skipped end
  if c.due then
    snap[9] = c.skipped or false
    snap[10] = math.max(0, c.due - c.now)
  end
  if c.docks and c.docks > c.now then
    snap[9], snap[10], snap[11] = snap[9] or false, snap[10] or false, 1
  end
  return snap
end

local function bump(c)
  local seq = tonumber(c.seq) or 0
  if seq == 0 then
    -- A new receiver, or one whose keys were lost (a Redis restart without persistence):
    -- count on from the clock, so seq still moves past anything a node saw before.
    seq = c.now * 1000
  end
  c.seq, c.dirty = seq + 1, true
end

-- Counts the live widgets over all nodes' reports (`flat`, as HGETALL gives it) and caches
-- whether there are any, until the first counted report expires. Answers the count.
local function count(c, flat)
  local total, on_air, previews, sole, soonest = 0, 0, 0, nil, nil
  for i = 1, #flat, 2 do
    local n, live_until, inactive, shown =
      string.match(flat[i + 1], '^(%d+) (%d+) ?(%d*) ?(%d*)$')
    n, live_until = tonumber(n), tonumber(live_until)
    if n and live_until > c.now then
      -- A report of no widgets is a node with previews open: no audience, but a node to tell
      -- of changes, so it counts against the calling node being the sole one.
      total = total + n
      on_air = on_air + math.max(0, n - (tonumber(inactive) or 0))
      previews = previews + (tonumber(shown) or 0)
      if sole == nil then sole = flat[i] elseif sole ~= flat[i] then sole = '*' end
      if soonest == nil or live_until < soonest then soonest = live_until end
    end
  end
  c.live_known, c.live_any, c.on_air, c.on_air_count = true, total > 0, on_air > 0, on_air
  c.previews = previews
  c.live_others = total > 0 and sole ~= c.node
  if total > 0 then c.live = int(soonest) .. ' ' .. sole else c.live = '0' end
  -- Live widgets all off air: marked, so the straight paths (which find no node of their own
  -- in it) leave the call to the general one, which sends nothing new.
  if total > 0 and on_air == 0 then c.live = c.live .. ' quiet' end
  c.recounted, c.dirty = true, true
  return total
end

-- The widgets hash: KEYS[5] for the functions given it, else found from the receiver's key
-- (same hash tag, so same slot).
local function widgets_key(c)
  if c.widgets_key then return c.widgets_key end
  return (string.gsub(c.keys[1], 'receiver$', 'widgets'))
end

-- What the `live` field says, if it still holds: whether its time is still to come, and then
-- whether the calling node (ARGV[1]) holds every live widget. "<until> <node>": the time
-- compared as text while both have as many digits (a conversion costs more than the rest of
-- this), the node without cutting it out.
local function cached_live(live, args)
  local space = live and string.find(live, ' ', 1, true)
  if not space then return false end
  local live_until, now, node = string.sub(live, 1, space - 1), args[2], args[1]
  local fresh
  if #live_until == #now then fresh = live_until > now
  else fresh = (tonumber(live_until) or 0) > tonumber(now) end
  if not fresh then return false end
  return true, #live == space + #node and string.find(live, node, space + 1, true) ~= nil
end

-- Whether any widget is live on any node, and whether a node other than the caller holds one:
-- from the cache while no report it counted has expired, else counted afresh. The cache is exact:
-- a report can only start counting through widgets() or sweep(), which count afresh.
local function presence(c)
  if not c.live_known then
    local live = c.live
    if live == '0' then
      c.live_known, c.live_any, c.live_others, c.on_air = true, false, false, false
    else
      -- " quiet": every live widget is off air (see count()).
      local quiet = live and string.sub(live, -6) == ' quiet'
      if quiet then live = string.sub(live, 1, -7) end
      local fresh, mine = cached_live(live, c.args)
      if fresh then
        c.live_known, c.live_any, c.live_others, c.on_air = true, true, not mine, not quiet
      else
        count(c, redis.call('HGETALL', widgets_key(c)))
      end
    end
  end
  return c.live_any, c.live_others
end

local function clear_flight(c)
  c.id, c.phase, c.duration, c.attempt, c.deadline, c.trail = false, false, false, false, false,
    false
  c.marked, c.started_at = false, false
  c.alert, c.alert_read, c.packed = false, true, false
end

-- How soon an alert with `waiting` ms of waiting alerts ahead of it can show (Eta in
-- src/store/machine.rs): 'paused', 'no_audience' while no widget is on air, or the ms: what is
-- left of the alert in flight (all of its duration until it starts), then `waiting`.
local function eta(c, waiting)
  if c.paused then return 'paused' end
  presence(c)
  if not c.on_air then return 'no_audience' end
  if not flight(c) then return waiting end
  marked(c)
  local left = tonumber(c.duration)
  if c.started_at then
    left = math.max(0, tonumber(c.started_at) + left - c.now)
  elseif c.phase == 'started' then
    -- A flight of layout 4 that says it started: its deadline has the ack grace in it too.
    left = math.max(0, tonumber(c.deadline) - c.now)
  end
  return left + waiting
end

-- Puts alerts at the head of the receiver's history, each as two elements (its queue entry, then
-- "<status> <trail>", so LPUSH leaves the header first): the entry goes in as it is, so no string
-- the size of an alert is made here. Each time the list's length passes a multiple of 128, it is
-- trimmed back to the alerts kept (c.keep, from the caller): one LTRIM, and one conversion of
-- c.keep, in 64 alerts. So it holds at most 64 alerts more than it keeps.
local function push_history(receiver, keep, ...)
  local key = string.sub(receiver, 1, -9) .. 'history' -- the receiver's key ends in 'receiver'
  local n = redis.call('LPUSH', key, ...)
  if math.floor(n / 128) ~= math.floor((n - select('#', ...)) / 128) then
    keep = tonumber(keep)
    if keep and n > 2 * keep then redis.call('LTRIM', key, 0, 2 * keep - 1) end
  end
end

local function remember(c, ...)
  push_history(c.keys[1], c.keep, ...)
end

-- The trail of a queue entry: the token after the times sent, unless the JSON follows them at
-- once (an entry of layout 3). `at` is where the id, duration and times sent end, if known.
local function entry_trail(entry, at)
  if not at then
    local head = string.match(entry, '^%S+ %d+ %d+ ')
    if not head then return nil end
    at = #head + 1
  end
  if string.byte(entry, at) == 123 then return '' end -- '{'
  local space = string.find(entry, ' ', at, true)
  if not space then return nil end
  return string.sub(entry, at, space - 1)
end

-- A queue entry's id, duration and times sent, and its trail; nil for one that does not parse.
local function parse_entry(entry)
  local id, duration, sent = string.match(entry, '^(%S+) (%d+) (%d+) ')
  if not id then return nil end
  local trail = entry_trail(entry, #id + #duration + #sent + 4)
  if not trail then return nil end
  return id, duration, sent, trail
end

-- The attempt of a send that follows `sent` earlier ones (a string as read, or a number).
local function next_attempt(sent)
  if sent == '0' then return '1' end
  return tonumber(sent) + 1
end

-- A queue entry's duration, as the digits it holds.
local function entry_duration(entry)
  local s1 = string.find(entry, ' ', 1, true)
  local s2 = s1 and string.find(entry, ' ', s1 + 1, true)
  return s2 and string.sub(entry, s1 + 1, s2 - 1)
end

-- Adds `ms` (a number, or digits with or without a '-') to the receiver's `wait`, the durations
-- of its waiting alerts, and answers the sum after it: every push to a lane adds the alert's
-- duration, every pop takes it away, one HINCRBY each. A sum below nothing (see the layout) is
-- set right.
local function add_wait(receiver, ms)
  local wait = redis.call('HINCRBY', receiver, 'wait', ms)
  if wait >= 0 then return wait end
  redis.call('HSET', receiver, 'wait', 0)
  return 0
end

-- Counts queue entry `entry`, just pushed to a lane, in `wait`; with `asked`, answers the sum of
-- the alerts that waited before it (else 0, sparing a conversion). `first`: none did, so the sum
-- is set afresh.
local function wait_more(receiver, entry, first, asked)
  local d = entry_duration(entry)
  if not d then return 0 end
  if first then
    redis.call('HSET', receiver, 'wait', d)
    return 0
  end
  local after = add_wait(receiver, d)
  if not asked then return 0 end
  return math.max(0, after - tonumber(d))
end

-- The priority lane's length, kept in `hold` by save().
local function set_ahead(c, n)
  c.ahead, c.hold_changed, c.dirty = int(n), true, true
end

-- The held alerts' key.
local function held_key(c)
  return string.sub(c.keys[1], 1, -9) .. 'held' -- KEYS[1] ends in 'receiver'
end

-- A held alert joins the back of its lane (`lane` 'p' or 'n'), its trail marked approved now.
local function approve(c, lane, entry)
  local head, rest = string.match(entry, '^(%S+ %d+ %d+ %S*)( .*)$')
  if not head then return end
  local approved = head .. 'a' .. c.args[2] .. rest
  add_wait(c.keys[1], entry_duration(entry) or 0)
  if lane == 'p' then
    redis.call('RPUSH', c.keys[4], approved)
    set_ahead(c, (tonumber(c.ahead) or 0) + 1)
  else
    redis.call('RPUSH', c.keys[2], approved)
  end
end

-- Rewrites the held alerts as `kept` (entries of the held list), counting them and finding the
-- soonest time one approves itself; writes the `hold` field at once, since a call may answer
-- early without saving.
local function rewrite_held(c, key, kept)
  redis.call('DEL', key)
  local due = false
  for i = 1, #kept, 1000 do
    redis.call('RPUSH', key, unpack(kept, i, math.min(i + 999, #kept)))
  end
  for i = 1, #kept do
    local at = tonumber(string.match(kept[i], '^(%d+) '))
    if at and (not due or at < due) then due = at end
  end
  c.held, c.due = #kept, due
  write_hold(c)
end

-- Takes the held alerts `take(at, entry)` picks out of the held list, oldest first, and answers
-- them as {lane, entry} pairs; the list is rewritten with the rest when any was taken, or with
-- `always` (which also sets the soonest due time right).
local function take_held(c, take, always)
  local key = held_key(c)
  local entries = redis.call('LRANGE', key, 0, -1)
  local kept, taken = {}, {}
  for i = 1, #entries do
    local at, lane, entry = string.match(entries[i], '^(%S+) (%a) (.*)$')
    if at and take(at, entry) then
      taken[#taken + 1] = {lane, entry}
    elseif at then
      kept[#kept + 1] = entries[i]
    end
  end
  if always or #taken > 0 then rewrite_held(c, key, kept) end
  return taken
end

-- Approves, oldest first, every held alert whose time to approve itself has come.
release = function(c)
  local due = function(at) return at ~= '-' and tonumber(at) <= c.now end
  local taken = take_held(c, due, true)
  for i = 1, #taken do approve(c, taken[i][1], taken[i][2]) end
  -- At once, as take_held() did: the call may answer early, without saving.
  if c.hold_changed then write_hold(c) end
end

-- Takes held alert `id` out of the held ones; answers its lane and queue entry, or nil.
local function unhold(c, id)
  if not c.held or c.held == 0 then return nil end
  local prefix, found = id .. ' ', false
  local taken = take_held(c, function(_, entry)
    if found or string.sub(entry, 1, #prefix) ~= prefix then return false end
    found = true
    return true
  end)
  if taken[1] then return taken[1][1], taken[1][2] end
  return nil
end

-- Free to busy: the one place an alert goes out. Only while free, not paused, and someone can
-- see it. From the priority lane while it holds any, else from the queue.
local function dispatch(c)
  if c.packed or c.id or c.paused or not presence(c) or not c.on_air then return end
  while true do
    local entry
    if c.ahead and c.ahead ~= '0' then
      entry = redis.call('LPOP', c.keys[4])
      -- A count that ran ahead of the lane is set right rather than wedge the receiver.
      if entry then set_ahead(c, tonumber(c.ahead) - 1) else set_ahead(c, 0) end
    else
      entry = redis.call('LPOP', c.keys[2])
      if not entry then return end
    end
    local id, duration, sent, trail
    if entry then id, duration, sent, trail = parse_entry(entry) end
    -- An entry that does not parse cannot be shown; it is skipped rather than wedge the queue.
    if id then
      add_wait(c.keys[1], '-' .. duration)
      -- Sent now, so not started: no mark can exist for this send yet.
      c.id, c.phase, c.duration, c.alert, c.alert_read = id, 'sent', duration, entry, true
      c.marked = 'none'
      c.attempt = next_attempt(sent)
      c.trail = trail .. 's' .. c.args[2] .. ':' .. str(c.attempt)
      -- Written as the node gave it: no conversion on the most frequent path.
      c.deadline, c.flight_changed = c.args[4], true
      bump(c)
      c.happened = c.happened .. ' sent'
      return
    end
  end
end

-- Busy to free: the one place an alert stops being in flight for good: 'done', 'expired' or
-- 'skipped' (marked `letter` in its trail), into history.
local function complete(c, how, letter)
  marked(c, true)
  redis.call('SREM', c.keys[3], c.id)
  local entry = flight_entry(c)
  if entry then remember(c, entry, how .. ' ' .. (c.trail or '') .. letter .. c.args[2]) end
  clear_flight(c)
  bump(c)
  c.happened = c.happened .. ' ' .. how
end

-- Back to the head of the queue when no widget is left to show it, remembering how many times
-- it was sent so the next send counts on. The head of the priority lane: it went out ahead of
-- everything still waiting, and goes out first again.
local function requeue(c)
  if not flight(c) then return end
  marked(c, true)
  local entry = flight_entry(c)
  local json_at = entry and string.find(entry, ' {', 1, true)
  if json_at then
    local attempt = str(c.attempt)
    local counted = c.id .. ' ' .. c.duration .. ' ' .. attempt .. ' ' .. c.trail .. 'q' ..
      c.args[2] .. ':' .. attempt .. string.sub(entry, json_at)
    redis.call('LPUSH', c.keys[4], counted)
    add_wait(c.keys[1], c.duration)
    set_ahead(c, (tonumber(c.ahead) or 0) + 1)
  else
    redis.call('SREM', c.keys[3], c.id)
  end
  clear_flight(c)
  bump(c)
  c.happened = c.happened .. ' requeued'
end

-- Writes the receiver back in one HSET, if this call changed it: seq, the alert in flight (its
-- packed fields when they changed, its entry when it is new), and a fresh count of live widgets.
local function save(c)
  if not c.dirty then return end
  local key, seq = c.keys[1], str(c.seq or 0)
  if c.flight_changed and c.id then
    local packed = c.id .. ' ' .. c.phase .. ' ' .. c.duration .. ' ' .. str(c.attempt) .. ' ' ..
      str(c.deadline) .. '|' .. (c.trail or '')
    if c.alert and not c.recounted then
      -- A new alert in flight: the usual case, and so the one written out.
      redis.call('HSET', key, 'seq', seq, 'flight', packed, 'alert', c.alert)
    else
      local h = {'HSET', key, 'seq', seq, 'flight', packed}
      if c.alert then h[#h + 1], h[#h + 2] = 'alert', c.alert end
      if c.recounted then h[#h + 1], h[#h + 2] = 'live', c.live end
      redis.call(unpack(h))
    end
  elseif c.recounted then
    redis.call('HSET', key, 'seq', seq, 'live', c.live)
  else
    redis.call('HSET', key, 'seq', seq)
  end
  if c.had_flight and not (c.id or c.packed) then redis.call('HDEL', key, 'flight', 'alert') end
  if c.hold_changed then write_hold(c) end
end

-- The call's answer, after saving; when seq moved, the new alert in flight goes with it and to
-- other nodes.
local function finish(c, with_alert)
  save(c)
  local changed = c.seq ~= c.seq_before
  local snap = snapshot(c, with_alert or changed)
  if changed then
    local _, others = presence(c)
    if others then
      local channel = string.gsub(c.keys[1], 'receiver$', 'events')
      local head = 'snapshot ' .. c.node
      if c.skipped then head = 'skip ' .. c.node .. ' ' .. c.skipped end
      -- Whether a dock is open goes too: a node marks a start with what it last heard.
      local docks = 0
      if snap[11] then docks = 1 end
      local remaining = 0
      if snap[3] then remaining = math.max(0, tonumber(snap[6]) - c.now) end
      redis.call(c.args[3], channel, table.concat({head, str(snap[2]),
        snap[3] or '-', str(snap[4]), snap[5], int(remaining), docks, snap[7] or ''}, ' '))
    end
  end
  return snap
end

-- How many alerts are ahead of queued alert `id`, their durations, and whether it was found (a
-- rare path: a publish repeated, a lookup).
local function position_in_queue(c, id)
  local prefix, before, ms = id .. ' ', 0, 0
  for _, lane in ipairs({c.keys[4], c.keys[2]}) do
    local entries = redis.call('LRANGE', lane, 0, -1)
    for i = 1, #entries do
      local e = entries[i]
      if string.sub(e, 1, #prefix) == prefix then return before + i - 1, ms, true end
      ms = ms + (tonumber(entry_duration(e)) or 0)
    end
    before = before + #entries
  end
  return 0, ms, false
end

-- The durations of the priority lane's alerts (a rare path: a high-priority publish).
local function priority_ms(c)
  local ms = 0
  if c.ahead and c.ahead ~= '0' then
    local entries = redis.call('LRANGE', c.keys[4], 0, -1)
    for i = 1, #entries do ms = ms + (tonumber(entry_duration(entries[i])) or 0) end
  end
  return ms
end

-- For the straight-line paths below: whether the live widgets cached in `live` are, until a time
-- still to come, all the calling node's.
local function live_here(live, args)
  local fresh, mine = cached_live(live, args)
  return fresh and mine
end

-- For the straight-line paths below: dispatch() and save() of a free receiver with no priority
-- lane, from `seq` (its seq, a number, before the send). Sends the head of the queue, past any
-- entry that does not parse, and writes the receiver; answers the snapshot finish() would, with
-- `happened` before ' sent', or nil when the queue is empty (nothing written). `uncounted`: the
-- head is an alert just pushed and not counted in `wait`, which stays as it is.
local function send_head(keys, args, seq, happened, uncounted)
  while true do
    local entry = redis.call('LPOP', keys[2])
    if not entry then return nil end
    local id, duration, times, trail = parse_entry(entry)
    if id then
      if not uncounted then add_wait(keys[1], '-' .. duration) end
      local attempt, now = next_attempt(times), args[2]
      seq = seq + 1
      redis.call('HSET', keys[1], 'seq', int(seq), 'flight', id .. ' sent ' .. duration .. ' ' ..
        attempt .. ' ' .. args[4] .. '|' .. trail .. 's' .. now .. ':' .. attempt, 'alert', entry)
      return {'snapshot', seq, id, attempt, 0, args[4], entry, happened .. ' sent'}
    end
  end
end

-- The way most publishes go, in straight-line code without the call context (see
-- done_at_once()): no idempotency key, to the back of the normal lane, not held, the receiver
-- holding nothing else (no `hold` field) and written in layout 5; and either busy, so the alert
-- waits, or free with no widget live (it waits) or every live one the calling node's (it goes out
-- now). It does what publish(), dispatch(), save() and finish() do in that case, and answers what
-- they would. Whether it applies is decided before anything is written; a repeated id goes to
-- publish() after its SADD, which publish() repeats and finds repeated too. `f` is the receiver
-- as read().
local function publish_at_once(keys, args, f)
  if keys[5] or args[9] or args[10] or f[4] then return nil end
  local seq, packed, live, id = f[1], f[2], f[3], args[5]
  if not seq then return nil end
  local flight_id, attempt, deadline, duration
  -- Whether some widget is on air, for how soon the alert shows (see eta()).
  local on_air = false
  if packed then
    -- "<id> <phase> <duration> <attempt> <deadline>|...", as flight() and marked() read it.
    local s1 = string.find(packed, ' ', 1, true)
    local s2 = s1 and string.find(packed, ' ', s1 + 1, true)
    local s3 = s2 and string.find(packed, ' ', s2 + 1, true)
    local s4 = s3 and string.find(packed, ' ', s3 + 1, true)
    local bar = s4 and string.find(packed, '|', s4 + 1, true)
    if not bar or string.sub(packed, s1 + 1, s2 - 1) ~= 'sent' then return nil end
    flight_id, attempt = string.sub(packed, 1, s1 - 1), string.sub(packed, s3 + 1, s4 - 1)
    deadline = string.sub(packed, s4 + 1, bar - 1)
    duration = string.sub(packed, s2 + 1, s3 - 1)
    if live ~= '0' then
      -- The cache as presence() reads it; one past its time takes the general path.
      local quiet = live and string.sub(live, -6) == ' quiet'
      if quiet then live = string.sub(live, 1, -7) end
      if not cached_live(live, args) then return nil end
      on_air = not quiet
    end
  elseif live ~= '0' and not live_here(live, args) then
    return nil
  elseif live ~= '0' and (tonumber(seq) or 0) == 0 then
    return nil
  end
  if redis.call('SADD', keys[3], id) == 0 then return nil end
  local waiting = redis.call('LLEN', keys[2])
  if waiting >= tonumber(args[7]) then
    redis.call('SREM', keys[3], id)
    return {'full'}
  end
  redis.call('RPUSH', keys[2], args[6])
  if packed then
    local started = 0
    local mark = redis.call('GET', mark_key(keys[1], flight_id, attempt))
    local at, graced
    if mark then at, graced = started_at(mark) end
    local left = tonumber(duration)
    if at then
      started, deadline = 1, tonumber(graced) + left
      left = math.max(0, tonumber(at) + left - tonumber(args[2]))
    end
    local ahead = wait_more(keys[1], args[6], waiting == 0, on_air)
    local eta = 'no_audience'
    if on_air then eta = left + ahead end
    return {'accepted', waiting + 1,
      {'snapshot', seq, flight_id, attempt, started, deadline, false, ''}, eta}
  end
  if live ~= '0' then
    -- Sent at once when nothing waited: then `wait` stays as it is.
    local ahead = 0
    if waiting > 0 then ahead = wait_more(keys[1], args[6], false, true) end
    local snap = send_head(keys, args, tonumber(seq), '', waiting == 0)
    return {'accepted', waiting, snap or {'snapshot', seq, false, 0, 0, 0, false, ''}, ahead}
  end
  wait_more(keys[1], args[6], waiting == 0, false)
  return {'accepted', waiting, {'snapshot', seq, false, 0, 0, 0, false, ''}, 'no_audience'}
end

-- ARGV[5] the alert's id, ARGV[6] its queue entry "<id> <duration_ms> 0 r<now> <alert json>",
-- ARGV[7] most alerts waiting, ARGV[8] idempotency ttl in seconds, ARGV[9] 'priority' for the
-- back of the priority lane, 'replay' for its head ('normal', or absent, for the back of the
-- normal one); ARGV[10], to hold it for approval: when it approves itself (ms), or '-'.
local function publish(keys, args)
  local f = read(keys, false)
  local answer = publish_at_once(keys, args, f)
  if answer then return answer end
  local c = open_to_write(keys, args, false, f)
  local id, idem = args[5], keys[5]
  if idem then
    local seen = redis.call('GET', idem)
    if seen then
      local first, position = string.match(seen, '^(%S+) (%d+)$')
      return {'duplicate', first, tonumber(position)}
    end
  end
  local busy = c.packed or c.id
  -- An id that is queued or in flight already: the node's retry of a call whose answer was
  -- lost (the first ran after all). Answered as that call would have been, queueing nothing.
  if redis.call('SADD', keys[3], id) == 0 then
    if c.held and c.held > 0 then
      local prefix = id .. ' '
      local held = redis.call('LRANGE', held_key(c), 0, -1)
      for i = 1, #held do
        local entry = string.match(held[i], '^%S+ %a (.*)$')
        if entry and string.sub(entry, 1, #prefix) == prefix then
          return {'held', finish(c, true)}
        end
      end
    end
    local position, eta_ms = 0, 0
    if flight(c) ~= id then
      local ms
      position, ms = position_in_queue(c, id)
      if busy then position = position + 1 end
      eta_ms = eta(c, ms)
    end
    return {'accepted', position, finish(c, true), eta_ms}
  end
  local ahead = tonumber(c.ahead) or 0
  local waiting = redis.call('LLEN', keys[2]) + ahead
  -- Held alerts count against the limit, not in a position: they are not in line yet.
  if waiting + (c.held or 0) >= tonumber(args[7]) then
    redis.call('SREM', keys[3], id)
    return {'full'}
  end
  if args[10] then
    -- Held for approval: its entry (the trail marked held by the node) waits in the held list.
    local lane = 'n'
    if args[9] == 'priority' then lane = 'p' end
    redis.call('RPUSH', held_key(c), args[10] .. ' ' .. lane .. ' ' .. args[6])
    local at = tonumber(args[10])
    c.held = (c.held or 0) + 1
    if at and (not c.due or at < c.due) then c.due = at end
    c.hold_changed, c.dirty = true, true
    if idem then redis.call('SET', idem, id .. ' 0', 'EX', args[8]) end
    return {'held', finish(c, false)}
  end
  local position, ahead_ms = waiting, 0
  if args[9] == 'priority' then
    position, ahead_ms = ahead, priority_ms(c)
    redis.call('RPUSH', keys[4], args[6])
    wait_more(keys[1], args[6], waiting == 0, false)
    set_ahead(c, ahead + 1)
  elseif args[9] == 'replay' then
    position = 0
    redis.call('LPUSH', keys[4], args[6])
    wait_more(keys[1], args[6], waiting == 0, false)
    set_ahead(c, ahead + 1)
  else
    redis.call('RPUSH', keys[2], args[6])
    ahead_ms = wait_more(keys[1], args[6], waiting == 0, true)
  end
  if busy then position = position + 1 end
  if idem then redis.call('SET', idem, id .. ' ' .. position, 'EX', args[8]) end
  -- How soon it shows, from the receiver as it was before it goes out.
  local eta_ms = eta(c, ahead_ms)
  dispatch(c)
  return {'accepted', position, finish(c, false), eta_ms}
end

-- ARGV[5] joined, left, withdrawn or refresh; ARGV[6] the count, for refresh;
-- ARGV[7] most widgets of one receiver; ARGV[8] how long a report stays live, ms; ARGV[9], if
-- any, how many of the node's widgets are off air after the change (none if absent); ARGV[10]
-- how many previews of the receiver the node has open (see count()).
local function widgets(keys, args)
  local c = open_to_write(keys, args)
  c.widgets_key = keys[5]
  local change = args[5]
  local flat = redis.call('HGETALL', keys[5])
  if change == 'joined' and count(c, flat) >= tonumber(args[7]) then return {'too_many'} end
  local mine, kept = 0, {}
  for i = 1, #flat, 2 do
    local n, live_until = string.match(flat[i + 1], '^(%d+) (%d+)')
    if flat[i] == c.node then
      mine = tonumber(n) or 0
    elseif not live_until or tonumber(live_until) <= c.now then
      -- A node that stopped refreshing its report is gone; forget it.
      redis.call('HDEL', keys[5], flat[i])
    else
      kept[#kept + 1], kept[#kept + 2] = flat[i], flat[i + 1]
    end
  end
  if change == 'joined' then
    mine = mine + 1
  elseif change == 'left' or change == 'withdrawn' then
    mine = math.max(0, mine - 1)
  else
    mine = tonumber(args[6])
  end
  -- A node with previews open keeps a report even of no widgets.
  local previews = tonumber(args[10]) or 0
  if mine > 0 or previews > 0 then
    local report = mine .. ' ' .. int(c.now + tonumber(args[8]))
    -- Of them, off air, then the previews besides (absent for none, the common case).
    local inactive = math.min(tonumber(args[9]) or 0, mine)
    if previews > 0 then
      report = report .. ' ' .. inactive .. ' ' .. previews
    elseif inactive > 0 then
      report = report .. ' ' .. inactive
    end
    redis.call('HSET', keys[5], c.node, report)
    kept[#kept + 1], kept[#kept + 2] = c.node, report
  else
    redis.call('HDEL', keys[5], c.node)
  end
  count(c, kept)
  -- A withdrawn widget (its node is stopping) will reconnect elsewhere and be given the alert
  -- in flight again, so it stays in flight.
  if change == 'withdrawn' then
    -- nothing moves
  elseif not presence(c) then
    requeue(c)
  else
    dispatch(c)
  end
  return finish(c, true)
end

-- ARGV[5] the alert a widget finished; ARGV[6] the length of history kept; ARGV[7], only when it
-- was shown without its speech, the letter of the mark that says why ('u' the engine failed, 'o'
-- it took too long). The alert's entry is read with the receiver, since it goes into history.
-- The way most dones go, in straight-line code without the call context (which alone costs a
-- drained alert a fifth of Redis's work: docs/benchmarks.md): the alert in flight is `id`, sent
-- (in layout 5's packed form), the receiver holds nothing else (no `hold` field: not paused, no
-- priority lane, nothing held, no dock), and by the cache its live widgets are all the calling
-- node's, so no other node needs telling. It does what complete(), dispatch(), save() and
-- finish() do in that case, step for step, and answers what they would; any other case, found
-- before anything is written, answers nil and takes them. `f` is the receiver as read().
local function done_at_once(keys, args, f)
  local id, packed, now = args[5], f[2], args[2]
  if f[4] or not (packed and f[5] and live_here(f[3], args)) then return nil end
  local sent = id .. ' sent '
  if string.sub(packed, 1, #sent) ~= sent then return nil end
  local seq = tonumber(f[1])
  local duration_end = string.find(packed, ' ', #sent + 1, true)
  local attempt_end = duration_end and string.find(packed, ' ', duration_end + 1, true)
  local bar = attempt_end and string.find(packed, '|', attempt_end + 1, true)
  if not (bar and seq) or seq == 0 then return nil end
  -- complete(): its mark taken, out of the ids, into history.
  local trail = string.sub(packed, bar + 1)
  local mark = redis.call('GETDEL',
    mark_key(keys[1], id, string.sub(packed, duration_end + 1, attempt_end - 1)))
  local at = mark and started_at(mark)
  if at then trail = trail .. 't' .. at end
  if args[7] then trail = trail .. args[7] .. now end
  redis.call('SREM', keys[3], id)
  push_history(keys[1], args[6], f[5], 'done ' .. trail .. 'd' .. now)
  seq = seq + 1
  -- dispatch(), save(), finish().
  local snap = send_head(keys, args, seq, ' done')
  if snap then return snap end
  redis.call('HSET', keys[1], 'seq', int(seq))
  redis.call('HDEL', keys[1], 'flight', 'alert')
  return {'snapshot', seq, false, 0, 0, 0, false, ' done'}
end

local function done(keys, args)
  local f = read(keys, true)
  local answer = done_at_once(keys, args, f)
  if answer then return answer end
  local c = open_to_write(keys, args, true, f)
  local id = args[5]
  c.keep = args[6]
  -- The common case went straight (done_at_once()); here the flight is parsed whole, and
  -- complete() takes its started mark.
  if flight(c) == id then
    if args[7] then
      -- After the start's mark, as the machine keeps them.
      marked(c)
      c.trail = c.trail .. args[7] .. args[2]
    end
    complete(c, 'done', 'd')
    dispatch(c)
  end
  return finish(c, false)
end

-- ARGV[5] the alert whose deadline may have passed; ARGV[6] the length of history kept.
local function check(keys, args)
  local c = open_to_write(keys, args)
  c.keep = args[6]
  if flight(c) == args[5] then marked(c) end
  if c.id == args[5] and tonumber(c.deadline) <= c.now then
    if c.phase ~= 'sent' then
      complete(c, 'expired', 'x')
      dispatch(c)
    elseif not presence(c) then
      requeue(c)
    else
      -- Sent but never started: the frame may have been lost, so send it again.
      c.attempt, c.deadline = tonumber(c.attempt) + 1, args[4]
      c.trail = c.trail .. 's' .. args[2] .. ':' .. int(c.attempt)
      c.flight_changed = true
      bump(c)
      c.happened = c.happened .. ' resent'
    end
  end
  return finish(c, false)
end

-- ARGV[5] a node found dead. Its widgets are gone; if no other widget is live, the alert in
-- flight goes back to the head of the queue.
local function sweep(keys, args)
  local c = open_to_write(keys, args)
  c.widgets_key = keys[5]
  redis.call('HDEL', keys[5], args[5])
  count(c, redis.call('HGETALL', keys[5]))
  if not presence(c) then requeue(c) else dispatch(c) end
  return finish(c, false)
end

-- ARGV[5] '1' to pause, '0' to resume. Pausing stops dispatch only: the alert in flight
-- finishes. Resuming dispatches at once.
local function pause(keys, args)
  local c = open_to_write(keys, args)
  local paused = args[5] == '1'
  if paused ~= (c.paused and true or false) then
    c.paused, c.hold_changed, c.dirty = paused and '1', true, true
  end
  if not paused then dispatch(c) end
  return finish(c, true)
end

-- ARGV[5] the alert to skip, or '' for whichever is in flight; ARGV[6] the length of history
-- kept. It completes as 'skipped', its widgets are told (the snapshot and the notice carry its
-- id), and the next goes out.
local function skip(keys, args)
  local c = open_to_write(keys, args)
  c.keep = args[6]
  local id = flight(c)
  if id and (args[5] == '' or args[5] == id) then
    complete(c, 'skipped', 'k')
    c.skipped = id
    dispatch(c)
  end
  return finish(c, true)
end

-- One chunk of a clear. ARGV[5] most alerts to remove; ARGV[6] and ARGV[7] how many of the
-- priority lane and of the queue are left to clear, or '' for all each holds now; ARGV[8] the
-- length of history kept. From the head of the priority lane, then of the queue; never the alert
-- in flight. Each goes into history as 'cleared'. Answers {'cleared', left in the priority lane,
-- left in the queue, {ids removed}, snapshot}.
local function clear(keys, args)
  local c = open_to_write(keys, args)
  c.keep = args[8]
  local most = tonumber(args[5])
  local ahead = tonumber(c.ahead) or 0
  local left_priority = tonumber(args[6]) or ahead
  local left_queue = tonumber(args[7]) or redis.call('LLEN', keys[2])
  local ids, records = {}, {}
  -- Removes up to `count` (and the chunk's room) from the head of `lane`; answers how many of
  -- `count` are left (0 once the lane ran out), how many went, and whether the lane ran out.
  local function take(lane, count)
    local n = math.min(count, most - #ids)
    if n <= 0 then return count, 0, false end
    local gone = redis.call('LPOP', lane, n)
    if not gone then return 0, 0, true end
    local ms = 0
    for i = 1, #gone do
      local id = string.match(gone[i], '^%S+')
      if id then ids[#ids + 1] = id end
      ms = ms + (tonumber(entry_duration(gone[i])) or 0)
      local trail = entry_trail(gone[i])
      if trail then
        records[#records + 1] = gone[i]
        records[#records + 1] = 'cleared ' .. trail .. 'c' .. args[2]
      end
    end
    if ms > 0 then add_wait(keys[1], -ms) end
    if #gone < n then return 0, #gone, true end
    return count - #gone, #gone, false
  end
  local popped, ran_out
  left_priority, popped, ran_out = take(keys[4], left_priority)
  if ran_out then
    if ahead ~= 0 then set_ahead(c, 0) end
  elseif popped > 0 then
    set_ahead(c, ahead - popped)
  end
  left_queue = take(keys[2], left_queue)
  for i = 1, #ids, 1000 do
    redis.call('SREM', keys[3], unpack(ids, i, math.min(i + 999, #ids)))
  end
  for i = 1, #records, 1000 do
    remember(c, unpack(records, i, math.min(i + 999, #records)))
  end
  return {'cleared', left_priority, left_queue, ids, finish(c, false)}
end

-- ARGV[5] the held alert the streamer approved: it joins the back of its lane, and goes out if
-- the receiver is free. Answers the snapshot, or {'not_held', snapshot}.
local function approve_one(keys, args)
  local c = open_to_write(keys, args)
  local lane, entry = unhold(c, args[5])
  if not entry then return {'not_held', finish(c, false)} end
  approve(c, lane, entry)
  dispatch(c)
  return finish(c, false)
end

-- ARGV[5] the held alert the streamer denied; ARGV[6] the length of history kept. It goes into
-- history as 'denied'. Answers the snapshot, or {'not_held', snapshot}.
local function deny(keys, args)
  local c = open_to_write(keys, args)
  c.keep = args[6]
  local _, entry = unhold(c, args[5])
  if not entry then return {'not_held', finish(c, false)} end
  redis.call('SREM', keys[3], args[5])
  local trail = entry_trail(entry)
  if trail then remember(c, entry, 'denied ' .. trail .. 'n' .. args[2]) end
  return finish(c, false)
end

-- Held alerts may be due to approve themselves (opening the call approves them): send one if
-- the receiver is free.
local function wake(keys, args)
  local c = open_to_write(keys, args)
  dispatch(c)
  return finish(c, false)
end

-- A node has a dock open on the receiver's feed until ARGV[5] (ms), and marks it so now and then:
-- while the mark holds, answers say so and nodes tell other nodes' docks what they do. Answers
-- {'docks'}.
local function docks(keys, args)
  local c = open(keys, args)
  local until_ms = tonumber(args[5])
  if not c.docks or c.docks < until_ms then
    c.docks = until_ms
    write_hold(c)
  end
  return {'docks'}
end

-- An alert moderation kept off screen: only recorded. ARGV[5] its queue entry, ARGV[6] its
-- history header ("filtered <trail>"), ARGV[7] the length of history kept. Answers the
-- receiver's snapshot, unchanged.
local function record(keys, args)
  local c = open(keys, args)
  c.keep = args[7]
  remember(c, args[5], args[6])
  return snapshot(c, false)
end

-- ARGV[5] 'widget' or 'dashboard': a new generation of that token of the receiver, after which
-- the old one opens nothing. The other nodes are told on the events channel, to close what holds
-- the old one. The generations live in the hash `<r>:tokens`, beside the receiver's hash (same
-- hash tag, so same slot). Answers {'rotated', widget generation, dashboard generation}.
local function rotate(keys, args)
  local tokens = string.gsub(keys[1], 'receiver$', 'tokens')
  redis.call('HINCRBY', tokens, args[5], 1)
  local g = redis.call('HMGET', tokens, 'widget', 'dashboard')
  local channel = string.gsub(keys[1], 'receiver$', 'events')
  redis.call(args[3], channel, 'rotated ' .. args[1] .. ' ' .. args[5])
  return {'rotated', g[1] or '0', g[2] or '0'}
end

-- A page of the waiting alerts, in the order they go out. ARGV[5] the offset, ARGV[6] most
-- alerts. Answers {'queue', waiting in all, {queue entries}, {held list entries}}. Reads only.
local function queue(keys, args)
  read_hold(c, redis.call('HGET', keys[1], 'hold'))
  local ahead = tonumber(c.ahead) or 0
  local total = ahead + redis.call('LLEN', keys[2])
  local from, most = tonumber(args[5]), tonumber(args[6])
  local page = {}
  if most > 0 and from < ahead then
    page = redis.call('LRANGE', keys[4], from, math.min(ahead, from + most) - 1)
  end
  if #page < most and from + #page < total then
    local start = math.max(0, from - ahead)
    local rest = redis.call('LRANGE', keys[2], start, start + most - #page - 1)
    for i = 1, #rest do page[#page + 1] = rest[i] end
  end
  local held = {}
  if c.held and c.held > 0 then
    held = redis.call('LRANGE', string.sub(keys[1], 1, -9) .. 'held', 0, -1)
  end
  return {'queue', total, page, held}
end

-- Where alert `id` is (machine.rs's locate()): {'located', 'in_flight', started at (ms) or
-- false}, {'located', 'queued', position, eta (see eta())}, {'located', 'held'}, or {'located',
-- false} when the receiver has it no more.
local function locate(c, id)
  if flight(c) == id then
    marked(c)
    return {'located', 'in_flight', c.started_at or false}
  end
  if redis.call('SISMEMBER', c.keys[3], id) == 0 then return {'located', false} end
  local position, ms, found = position_in_queue(c, id)
  if found then
    if c.packed or c.id then position = position + 1 end
    return {'located', 'queued', position, eta(c, ms)}
  end
  if c.held and c.held > 0 then
    local prefix = id .. ' '
    local held = redis.call('LRANGE', held_key(c), 0, -1)
    for i = 1, #held do
      local entry = string.match(held[i], '^%S+ %a (.*)$')
      if entry and string.sub(entry, 1, #prefix) == prefix then return {'located', 'held'} end
    end
  end
  return {'located', false}
end

-- {'status', queued, live widgets, alert in flight as its queue entry or false, paused (0 or
-- 1), held, the trail of the alert in flight or false}; with ARGV[5], an alert's id, where that
-- alert is instead (see locate()). Reads only: a receiver still in layout 1 is read, not taken
-- over.
local function status(keys, args)
  local c, unwritten = open(keys, args)
  if unwritten then read_layout_1(c, false) end
  c.widgets_key = keys[5]
  local total = count(c, redis.call('HGETALL', keys[5]))
  if args[5] then return locate(c, args[5]) end
  local entry = false
  if flight(c) then
    entry = flight_entry(c) or false
    marked(c)
  end
  local paused = 0
  if c.paused then paused = 1 end
  local queued = redis.call('LLEN', keys[2]) + (tonumber(c.ahead) or 0)
  return {'status', queued, total, entry, paused, c.held or 0, c.trail or false, c.on_air_count,
    c.previews}
end

-- Broadcast topics (src/topics): not a receiver's, but kept here so one library is loaded and
-- reloaded. KEYS[1] the topic's hash (`last`: the offset it last gave), KEYS[2] its log, a list
-- of "<at, ms> <offset> <frame>", oldest first; both share the hash tag of the topic's bucket
-- with the bucket's channel (src/store/redis/keys.rs).
--
-- ARGV[1] the calling node, ARGV[2] the time (ms), ARGV[3] PUBLISH or SPUBLISH, ARGV[4] the
-- bucket's channel, ARGV[5] the topic, ARGV[6] the message's body (every field of its frame
-- after the offset, serialized once by the node), ARGV[7] how many messages the log keeps,
-- ARGV[8] how long each is kept (ms). The next offset is the last one plus one; a topic with
-- none (new, or its keys expired or lost) starts from the time in ms times a thousand, past any
-- offset it gave before: a new epoch. Answers the offset; the frame goes to every node as
-- "topic <node> <topic> <offset> <frame>", byte for byte what the node would make of it.
local function topic_append(keys, args)
  local last = redis.call('HGET', keys[1], 'last')
  if last then last = tonumber(last) + 1 else last = tonumber(args[2]) * 1000 + 1 end
  local offset = int(last)
  local frame = '{"type":"message","topic":"' .. args[5] .. '","offset":' .. offset .. ',' ..
    args[6] .. '}'
  redis.call('HSET', keys[1], 'last', offset)
  redis.call('PEXPIRE', keys[1], args[8])
  local keep = tonumber(args[7])
  if keep > 0 then
    redis.call('RPUSH', keys[2], args[2] .. ' ' .. offset .. ' ' .. frame)
    redis.call('LTRIM', keys[2], -keep, -1)
    redis.call('PEXPIRE', keys[2], args[8])
  end
  redis.call(args[3], args[4], 'topic ' .. args[1] .. ' ' .. args[5] .. ' ' .. offset .. ' ' ..
    frame)
  return offset
end

-- What a topic keeps: {last offset or false, {log entries}}. Reads only.
local function topic_read(keys, args)
  return {redis.call('HGET', keys[1], 'last') or false, redis.call('LRANGE', keys[2], 0, -1)}
end

redis.register_function('cuebox_v6_topic_append', topic_append)
redis.register_function{
  function_name = 'cuebox_v6_topic_read', callback = topic_read, flags = {'no-writes'}
}
redis.register_function('cuebox_v6_publish', publish)
redis.register_function('cuebox_v6_widgets', widgets)
redis.register_function('cuebox_v6_done', done)
redis.register_function('cuebox_v6_check', check)
redis.register_function('cuebox_v6_sweep', sweep)
redis.register_function('cuebox_v6_pause', pause)
redis.register_function('cuebox_v6_skip', skip)
redis.register_function('cuebox_v6_clear', clear)
redis.register_function('cuebox_v6_rotate', rotate)
redis.register_function('cuebox_v6_record', record)
redis.register_function('cuebox_v6_approve', approve_one)
redis.register_function('cuebox_v6_deny', deny)
redis.register_function('cuebox_v6_wake', wake)
redis.register_function('cuebox_v6_docks', docks)
redis.register_function{
  function_name = 'cuebox_v6_status', callback = status, flags = {'no-writes'}
}
redis.register_function{
  function_name = 'cuebox_v6_queue', callback = queue, flags = {'no-writes'}
}
