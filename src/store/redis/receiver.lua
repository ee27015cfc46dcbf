#!lua name=cuebox_v1
-- The Redis Functions library of cuebox: every state transition of one receiver, each one
-- atomic because Redis runs a function whole. The rules are written out in src/store/mod.rs and
-- once as a pure machine in src/store/machine.rs, which the embedded store runs;
-- tests/api/differential.rs holds this library to that machine, and tests/api/conformance.rs
-- holds both stores to the rules.
--
-- Loaded once per Redis (FUNCTION LOAD), so the helpers below are made once, not on every call
-- as a script's are. The library and every function name carry the version (v1): nodes of two
-- versions can share a Redis during a rolling deploy, each calling its own.
--
-- Every function but `started` takes the same keys and leading arguments:
-- KEYS[1] state    hash    seq; while busy: id attempt phase deadline duration
-- KEYS[2] queue    list    ids of waiting alerts, head first
-- KEYS[3] alerts   hash    id -> "<duration_ms> <times sent> <alert json>"
-- KEYS[4] widgets  hash    node id -> "<widgets> <live until, ms>"
-- KEYS[5] idempotency key (publish with a key only)
-- ARGV[1] calling node   ARGV[2] events channel
-- ARGV[3] start timeout ms   ARGV[4] ack grace ms   ARGV[5] presence ttl ms
-- ARGV[6] PUBLISH, or SPUBLISH on a Redis Cluster (the channel shares the receiver's slot)
-- ARGV[7] the time in ms, for tests that move the clock themselves; empty: Redis's own clock
-- ARGV[8..] the function's own arguments
--
-- Every answer is a tagged array: its first element names its kind ('snapshot', 'accepted',
-- 'duplicate', 'full', 'too_many', 'status'), so a new kind has room and no meaning rides on an
-- array's length. Every function but status answers with a snapshot (see snapshot()), alone or
-- inside another kind. When the call moved the receiver's seq and another node has live
-- widgets, the snapshot is also published on the events channel, as a line of the same fields
-- that starts with its kind ('snapshot') and the calling node.

-- Numbers past 1e14 (seq) must not be written in Lua's exponent form.
local function int(n)
  return string.format('%d', n)
end

-- An alert as stored, "<duration_ms> <times sent> <alert json>": its two numbers. The JSON is
-- never cut out here; answers carry the stored value whole and the node skips the numbers, which
-- spares Redis a copy of every alert on every send.
local function parse_alert(value)
  local duration, sent = string.match(value, '^(%d+) (%d+) ')
  return tonumber(duration), tonumber(sent)
end

-- Redis's clock, not the nodes': every node then agrees on every deadline. A test that moves the
-- clock itself gives the time instead (`given`; empty in production).
local function clock(given)
  local now = tonumber(given)
  if not now then
    local time = redis.call('TIME')
    now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  end
  return now
end

-- One call's context: its keys, its node's constants, the clock, and the receiver's state, read
-- once. Functions change `c.st`; finish() writes it back in one HSET (`started`, which changes
-- two fields only, writes them itself). One context serves every call, filled afresh by each:
-- Redis runs one function at a time, and making new tables on every call costs it more than
-- filling old ones.
local c = {st = {}, events = {}}
local function open(keys, args)
  local now = clock(args[7])
  local f = redis.call('HMGET', keys[1], 'seq', 'id', 'attempt', 'phase', 'deadline', 'duration')
  local seq = tonumber(f[1]) or 0
  c.state, c.queue, c.alerts, c.widgets, c.idem = keys[1], keys[2], keys[3], keys[4], keys[5]
  c.node, c.channel, c.publish = args[1], args[2], args[6]
  c.start_timeout, c.ack_grace = tonumber(args[3]), tonumber(args[4])
  c.presence_ttl = tonumber(args[5])
  c.now = now
  c.had_flight = f[2] ~= false
  local st = c.st
  st.seq, st.id, st.attempt = seq, f[2] or nil, tonumber(f[3])
  st.phase, st.deadline, st.duration = f[4] or nil, tonumber(f[5]), tonumber(f[6])
  c.seq_before = seq
  c.dirty = false
  -- The in-flight alert as stored, once this call has read it.
  c.alert_json = nil
  -- What this call did, in order, for the caller's metrics: sent resent requeued done expired.
  local events = c.events
  for i = #events, 1, -1 do events[i] = nil end
  -- Live widgets over all nodes, and whether a live node other than the caller holds any;
  -- read once per call, after any change the call makes to the widgets hash.
  c.live_total, c.live_others = nil, nil
  return c
end

-- {'snapshot', seq, id, attempt, started (0 or 1), ms to deadline, alert as stored, events}; id
-- and the alert are false when free, and the alert is false unless asked for.
local function snapshot(c, with_alert)
  local st = c.st
  local happened = table.concat(c.events, ' ')
  if not st.id then return {'snapshot', st.seq, false, 0, 0, 0, false, happened} end
  if with_alert and not c.alert_json then
    c.alert_json = redis.call('HGET', c.alerts, st.id) or nil
  end
  local json = false
  if with_alert and c.alert_json then json = c.alert_json end
  local started = 0
  if st.phase == 'started' then started = 1 end
  return {'snapshot', st.seq, st.id, st.attempt, started, math.max(0, st.deadline - c.now), json,
    happened}
end

local function bump(c)
  local st = c.st
  if st.seq == 0 then
    -- A new receiver, or one whose keys were lost (a Redis restart without persistence):
    -- count on from the clock, so seq still moves past anything a node saw before.
    st.seq = c.now * 1000
  end
  st.seq = st.seq + 1
  c.dirty = true
end

local function presence(c)
  if c.live_total == nil then
    local total, others = 0, false
    local flat = redis.call('HGETALL', c.widgets)
    for i = 1, #flat, 2 do
      local count, live_until = string.match(flat[i + 1], '^(%d+) (%d+)$')
      count, live_until = tonumber(count), tonumber(live_until)
      if count and count > 0 and live_until > c.now then
        total = total + count
        if flat[i] ~= c.node then others = true end
      end
    end
    c.live_total, c.live_others = total, others
  end
  return c.live_total, c.live_others
end

local function clear_flight(c)
  local st = c.st
  st.id, st.attempt, st.phase, st.deadline, st.duration = nil, nil, nil, nil, nil
  c.alert_json = nil
end

-- Free to busy: the one place an alert goes out. Only while free and someone can see it.
local function dispatch(c)
  local st = c.st
  if st.id or presence(c) == 0 then return end
  while true do
    local id = redis.call('LPOP', c.queue)
    if not id then return end
    local value = redis.call('HGET', c.alerts, id)
    -- An id without its alert cannot be shown; skip it rather than wedge the queue.
    if value then
      local duration, sent = parse_alert(value)
      st.id, st.attempt, st.phase = id, sent + 1, 'sent'
      st.deadline, st.duration = c.now + c.start_timeout, duration
      c.alert_json = value
      bump(c)
      table.insert(c.events, 'sent')
      return
    end
  end
end

-- Busy to free: the one place an alert stops being in flight for good: 'done' or 'expired'.
local function complete(c, how)
  redis.call('HDEL', c.alerts, c.st.id)
  clear_flight(c)
  bump(c)
  table.insert(c.events, how)
end

-- Back to the head of the queue when no widget is left to show it, remembering how many times
-- it was sent so the next send counts on.
local function requeue(c)
  local st = c.st
  if not st.id then return end
  local value = redis.call('HGET', c.alerts, st.id)
  if value then
    local counted = string.gsub(value, '^(%d+) %d+ ', '%1 ' .. st.attempt .. ' ', 1)
    redis.call('HSET', c.alerts, st.id, counted)
    redis.call('LPUSH', c.queue, st.id)
  end
  clear_flight(c)
  bump(c)
  table.insert(c.events, 'requeued')
end

-- Writes `st` back, if this call changed it.
local function save(c)
  if not c.dirty then return end
  local st = c.st
  if st.id then
    redis.call('HSET', c.state, 'seq', int(st.seq), 'id', st.id, 'attempt', int(st.attempt),
      'phase', st.phase, 'deadline', int(st.deadline), 'duration', int(st.duration))
  else
    redis.call('HSET', c.state, 'seq', int(st.seq))
    if c.had_flight then
      redis.call('HDEL', c.state, 'id', 'attempt', 'phase', 'deadline', 'duration')
    end
  end
end

-- The call's answer, after saving; when seq moved, the new alert in flight goes with it and to
-- other nodes.
local function finish(c, with_alert)
  save(c)
  local changed = c.st.seq ~= c.seq_before
  local snap = snapshot(c, with_alert or changed)
  if changed then
    local _, others = presence(c)
    if others then
      redis.call(c.publish, c.channel, table.concat({'snapshot', c.node, int(snap[2]),
        snap[3] or '-', snap[4], snap[5], snap[6], snap[7] or ''}, ' '))
    end
  end
  return snap
end

-- ARGV[8] the alert's id, ARGV[9] "<duration_ms> 0 <alert json>", ARGV[10] most alerts
-- waiting, ARGV[11] idempotency ttl in seconds.
local function publish(keys, args)
  local c = open(keys, args)
  local st = c.st
  local id, value, max_queue, idem_ttl = args[8], args[9], tonumber(args[10]), args[11]
  if c.idem then
    local seen = redis.call('GET', c.idem)
    if seen then
      local first, position = string.match(seen, '^(%S+) (%d+)$')
      return {'duplicate', first, tonumber(position)}
    end
  end
  -- An id that is queued or in flight already: the node's retry of a call whose answer was
  -- lost (the first ran after all). Answered as that call would have been, queueing nothing.
  if redis.call('HSETNX', c.alerts, id, value) == 0 then
    local position = 0
    if st.id ~= id then
      position = redis.call('LPOS', c.queue, id) or 0
      if st.id then position = position + 1 end
    end
    return {'accepted', position, finish(c, true)}
  end
  local waiting = redis.call('LLEN', c.queue)
  if waiting >= max_queue then
    redis.call('HDEL', c.alerts, id)
    return {'full'}
  end
  local position = waiting
  if st.id then position = position + 1 end
  redis.call('RPUSH', c.queue, id)
  if c.idem then redis.call('SET', c.idem, id .. ' ' .. position, 'EX', idem_ttl) end
  dispatch(c)
  return {'accepted', position, finish(c, false)}
end

-- ARGV[8] joined, left, withdrawn or refresh; ARGV[9] the count, for refresh;
-- ARGV[10] most widgets of one receiver.
local function widgets(keys, args)
  local c = open(keys, args)
  local change, count, max_widgets = args[8], tonumber(args[9]), tonumber(args[10])
  if change == 'joined' and presence(c) >= max_widgets then return {'too_many'} end
  c.live_total = nil -- read again below, after this call's own change
  local mine = 0
  local flat = redis.call('HGETALL', c.widgets)
  for i = 1, #flat, 2 do
    local n, live_until = string.match(flat[i + 1], '^(%d+) (%d+)$')
    if flat[i] == c.node then
      mine = tonumber(n) or 0
    elseif not live_until or tonumber(live_until) <= c.now then
      -- A node that stopped refreshing its report is gone; forget it.
      redis.call('HDEL', c.widgets, flat[i])
    end
  end
  if change == 'joined' then
    mine = mine + 1
  elseif change == 'left' or change == 'withdrawn' then
    mine = math.max(0, mine - 1)
  else
    mine = count
  end
  if mine > 0 then
    redis.call('HSET', c.widgets, c.node, mine .. ' ' .. (c.now + c.presence_ttl))
  else
    redis.call('HDEL', c.widgets, c.node)
  end
  -- A withdrawn widget (its node is stopping) will reconnect elsewhere and be given the alert
  -- in flight again, so it stays in flight.
  if change == 'withdrawn' then
    -- nothing moves
  elseif presence(c) == 0 then
    requeue(c)
  else
    dispatch(c)
  end
  return finish(c, true)
end

-- A widget began to show an alert. The most frequent call, and it moves no seq, so it is given
-- only what it needs: KEYS[1] state; ARGV[1] the time (as ARGV[7] above), ARGV[2] the alert's
-- id, ARGV[3] the ack grace in ms. Answers the snapshot, without the alert.
local function started(keys, args)
  local now = clock(args[1])
  local f = redis.call('HMGET', keys[1], 'seq', 'id', 'attempt', 'phase', 'deadline', 'duration')
  local seq, id = tonumber(f[1]) or 0, f[2]
  if not id then return {'snapshot', seq, false, 0, 0, 0, false, ''} end
  local phase, deadline = f[4], tonumber(f[5])
  if id == args[2] and phase == 'sent' then
    phase, deadline = 'started', now + tonumber(f[6]) + tonumber(args[3])
    redis.call('HSET', keys[1], 'phase', phase, 'deadline', int(deadline))
  end
  local is_started = 0
  if phase == 'started' then is_started = 1 end
  return {'snapshot', seq, id, tonumber(f[3]), is_started, math.max(0, deadline - now), false, ''}
end

-- ARGV[8] the alert a widget finished.
local function done(keys, args)
  local c = open(keys, args)
  if c.st.id == args[8] then
    complete(c, 'done')
    dispatch(c)
  end
  return finish(c, false)
end

-- ARGV[8] the alert whose deadline may have passed.
local function check(keys, args)
  local c = open(keys, args)
  local st = c.st
  if st.id == args[8] and st.deadline <= c.now then
    if st.phase ~= 'sent' then
      complete(c, 'expired')
      dispatch(c)
    elseif presence(c) == 0 then
      requeue(c)
    else
      -- Sent but never started: the frame may have been lost, so send it again.
      st.attempt, st.deadline = st.attempt + 1, c.now + c.start_timeout
      bump(c)
      table.insert(c.events, 'resent')
    end
  end
  return finish(c, false)
end

-- ARGV[8] a node found dead. Its widgets are gone; if no other widget is live, the alert in
-- flight goes back to the head of the queue.
local function sweep(keys, args)
  local c = open(keys, args)
  redis.call('HDEL', c.widgets, args[8])
  if presence(c) == 0 then requeue(c) else dispatch(c) end
  return finish(c, false)
end

-- {'status', queued, live widgets, alert in flight as stored or false}
local function status(keys, args)
  local c = open(keys, args)
  local total = presence(c)
  local snap = snapshot(c, true)
  return {'status', redis.call('LLEN', c.queue), total, snap[7]}
end

redis.register_function('cuebox_v1_publish', publish)
redis.register_function('cuebox_v1_widgets', widgets)
redis.register_function('cuebox_v1_started', started)
redis.register_function('cuebox_v1_done', done)
redis.register_function('cuebox_v1_check', check)
redis.register_function('cuebox_v1_sweep', sweep)
redis.register_function{
  function_name = 'cuebox_v1_status', callback = status, flags = {'no-writes'}
}
