-- receiver.lua: every state transition of one receiver, each one atomic because Redis runs a
-- script whole. The rules are written out in src/store/mod.rs and once as a pure machine in
-- src/store/machine.rs, which the embedded store runs; tests/api/conformance.rs holds both
-- stores to them.
--
-- KEYS[1] state    hash    seq; while busy: id attempt phase deadline duration
-- KEYS[2] queue    list    ids of waiting alerts, head first
-- KEYS[3] alerts   hash    id -> "<duration_ms> <times sent> <alert json>"
-- KEYS[4] widgets  hash    node id -> "<widgets> <live until, ms>"
-- KEYS[5] idempotency key (publish with a key only)
-- ARGV[1] op   ARGV[2] calling node   ARGV[3] events channel
-- ARGV[4] start timeout ms   ARGV[5] ack grace ms   ARGV[6] presence ttl ms
-- ARGV[7] PUBLISH, or SPUBLISH on a Redis Cluster (the channel shares the receiver's slot)
-- ARGV[8] the time in ms, for tests that move the clock themselves; empty: Redis's own clock
-- ARGV[9..] the op's own arguments
--
-- Every op but status answers with a snapshot (see snapshot()). When the op moved the receiver's
-- seq and another node has live widgets, the snapshot is also published on the events channel.

local state, queue, alerts, widgets = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, node, channel = ARGV[1], ARGV[2], ARGV[3]
local start_timeout, ack_grace = tonumber(ARGV[4]), tonumber(ARGV[5])
local presence_ttl = tonumber(ARGV[6])
local publish = ARGV[7]

-- Redis's clock, not the nodes': every node then agrees on every deadline. (A test that moves
-- the clock itself gives the time instead, to hold this script to src/store/machine.rs.)
local now = tonumber(ARGV[8])
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- The receiver's state, read once. Ops change `st`; finish() writes it back in one HSET
-- (`started`, which changes two fields only, writes them itself).
local f = redis.call('HMGET', state, 'seq', 'id', 'attempt', 'phase', 'deadline', 'duration')
local had_flight = f[2] ~= false
local st = {
  seq = tonumber(f[1]) or 0,
  id = f[2] or nil,
  attempt = tonumber(f[3]),
  phase = f[4] or nil,
  deadline = tonumber(f[5]),
  duration = tonumber(f[6]),
}
local seq_before = st.seq
local dirty = false
-- The in-flight alert's JSON, once this op has read it.
local alert_json = nil
-- What this op did, in order, for the caller's metrics: sent resent requeued done expired.
local events = {}

-- Numbers past 1e14 (seq) must not be written in Lua's exponent form.
local function int(n)
  return string.format('%d', n)
end

local function parse_alert(value)
  local duration, sent, json = string.match(value, '^(%d+) (%d+) (.*)$')
  return tonumber(duration), tonumber(sent), json
end

-- {seq, id, attempt, started (0 or 1), ms to deadline, alert json, events}; id and json are
-- nil when free, and json is nil unless asked for.
local function snapshot(with_alert)
  local happened = table.concat(events, ' ')
  if not st.id then return {st.seq, false, 0, 0, 0, false, happened} end
  if with_alert and not alert_json then
    local value = redis.call('HGET', alerts, st.id)
    if value then
      local _, _, j = parse_alert(value)
      alert_json = j
    end
  end
  local json = false
  if with_alert and alert_json then json = alert_json end
  local started = 0
  if st.phase == 'started' then started = 1 end
  return {st.seq, st.id, st.attempt, started, math.max(0, st.deadline - now), json, happened}
end

-- `started` is the most frequent op and moves no seq, so it is answered here, before the
-- helpers the other ops need are made: making them costs Redis time on every call.
if op == 'started' then
  if st.id == ARGV[9] and st.phase == 'sent' then
    st.phase, st.deadline = 'started', now + st.duration + ack_grace
    redis.call('HSET', state, 'phase', st.phase, 'deadline', int(st.deadline))
  end
  return snapshot(false)
end

local function bump()
  if st.seq == 0 then
    -- A new receiver, or one whose keys were lost (a Redis restart without persistence):
    -- count on from the clock, so seq still moves past anything a node saw before.
    st.seq = now * 1000
  end
  st.seq = st.seq + 1
  dirty = true
end

-- Live widgets over all nodes, and whether a live node other than the caller holds any.
-- Read once per op, after any change the op makes to the widgets hash.
local live_total, live_others
local function presence()
  if live_total == nil then
    live_total, live_others = 0, false
    local flat = redis.call('HGETALL', widgets)
    for i = 1, #flat, 2 do
      local count, live_until = string.match(flat[i + 1], '^(%d+) (%d+)$')
      count, live_until = tonumber(count), tonumber(live_until)
      if count and count > 0 and live_until > now then
        live_total = live_total + count
        if flat[i] ~= node then live_others = true end
      end
    end
  end
  return live_total, live_others
end

local function clear_flight()
  st.id, st.attempt, st.phase, st.deadline, st.duration = nil, nil, nil, nil, nil
  alert_json = nil
end

-- Free to busy: the one place an alert goes out. Only while free and someone can see it.
local function dispatch()
  if st.id or presence() == 0 then return end
  while true do
    local id = redis.call('LPOP', queue)
    if not id then return end
    local value = redis.call('HGET', alerts, id)
    -- An id without its alert cannot be shown; skip it rather than wedge the queue.
    if value then
      local duration, sent, json = parse_alert(value)
      st.id, st.attempt, st.phase = id, sent + 1, 'sent'
      st.deadline, st.duration = now + start_timeout, duration
      alert_json = json
      bump()
      table.insert(events, 'sent')
      return
    end
  end
end

-- Busy to free: the one place an alert stops being in flight for good: 'done' or 'expired'.
local function complete(how)
  redis.call('HDEL', alerts, st.id)
  clear_flight()
  bump()
  table.insert(events, how)
end

-- Back to the head of the queue when no widget is left to show it, remembering how many times
-- it was sent so the next send counts on.
local function requeue()
  if not st.id then return end
  local value = redis.call('HGET', alerts, st.id)
  if value then
    local duration, _, json = parse_alert(value)
    redis.call('HSET', alerts, st.id, duration .. ' ' .. st.attempt .. ' ' .. json)
    redis.call('LPUSH', queue, st.id)
  end
  clear_flight()
  bump()
  table.insert(events, 'requeued')
end

-- Writes `st` back, if this op changed it.
local function save()
  if not dirty then return end
  if st.id then
    redis.call('HSET', state, 'seq', int(st.seq), 'id', st.id, 'attempt', int(st.attempt),
      'phase', st.phase, 'deadline', int(st.deadline), 'duration', int(st.duration))
  else
    redis.call('HSET', state, 'seq', int(st.seq))
    if had_flight then
      redis.call('HDEL', state, 'id', 'attempt', 'phase', 'deadline', 'duration')
    end
  end
end

-- The op's answer, after saving; when seq moved, the new alert in flight goes with it and to
-- other nodes.
local function finish(with_alert)
  save()
  local changed = st.seq ~= seq_before
  local snap = snapshot(with_alert or changed)
  if changed then
    local _, others = presence()
    if others then
      local id, json = snap[2], snap[6]
      redis.call(publish, channel, table.concat({node, int(snap[1]), id or '-',
        snap[3], snap[4], snap[5], json or ''}, ' '))
    end
  end
  return snap
end

if op == 'publish' then
  local id, value, max_queue, idem_ttl = ARGV[9], ARGV[10], tonumber(ARGV[11]), ARGV[12]
  local idem = KEYS[5]
  if idem then
    local seen = redis.call('GET', idem)
    if seen then
      local first, position = string.match(seen, '^(%S+) (%d+)$')
      return {'duplicate', first, tonumber(position)}
    end
  end
  -- An id that is queued or in flight already: the node's retry of a call whose answer was
  -- lost (the first ran after all). Answered as that call would have been, queueing nothing.
  if redis.call('HSETNX', alerts, id, value) == 0 then
    local position = 0
    if st.id ~= id then
      position = redis.call('LPOS', queue, id) or 0
      if st.id then position = position + 1 end
    end
    return {'accepted', position, finish(true)}
  end
  local waiting = redis.call('LLEN', queue)
  if waiting >= max_queue then
    redis.call('HDEL', alerts, id)
    return {'full'}
  end
  local position = waiting
  if st.id then position = position + 1 end
  redis.call('RPUSH', queue, id)
  if idem then redis.call('SET', idem, id .. ' ' .. position, 'EX', idem_ttl) end
  dispatch()
  return {'accepted', position, finish(false)}

elseif op == 'widgets' then
  local change, count, max_widgets = ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11])
  if change == 'joined' and presence() >= max_widgets then return {'too_many'} end
  live_total = nil -- read again below, after this op's own change
  local mine = 0
  local flat = redis.call('HGETALL', widgets)
  for i = 1, #flat, 2 do
    local n, live_until = string.match(flat[i + 1], '^(%d+) (%d+)$')
    if flat[i] == node then
      mine = tonumber(n) or 0
    elseif not live_until or tonumber(live_until) <= now then
      -- A node that stopped refreshing its report is gone; forget it.
      redis.call('HDEL', widgets, flat[i])
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
    redis.call('HSET', widgets, node, mine .. ' ' .. (now + presence_ttl))
  else
    redis.call('HDEL', widgets, node)
  end
  -- A withdrawn widget (its node is stopping) will reconnect elsewhere and be given the
  -- alert in flight again, so it stays in flight.
  if change == 'withdrawn' then
    -- nothing moves
  elseif presence() == 0 then
    requeue()
  else
    dispatch()
  end
  return finish(true)

elseif op == 'done' then
  if st.id == ARGV[9] then
    complete('done')
    dispatch()
  end
  return finish(false)

elseif op == 'check' then
  if st.id == ARGV[9] and st.deadline <= now then
    if st.phase ~= 'sent' then
      complete('expired')
      dispatch()
    elseif presence() == 0 then
      requeue()
    else
      -- Sent but never started: the frame may have been lost, so send it again.
      st.attempt, st.deadline = st.attempt + 1, now + start_timeout
      bump()
      table.insert(events, 'resent')
    end
  end
  return finish(false)

elseif op == 'sweep' then
  -- ARGV[9]: a node found dead. Its widgets are gone; if no other widget is live, the alert in
  -- flight goes back to the head of the queue.
  redis.call('HDEL', widgets, ARGV[9])
  if presence() == 0 then requeue() else dispatch() end
  return finish(false)

elseif op == 'status' then
  local total = presence()
  local snap = snapshot(true)
  return {redis.call('LLEN', queue), total, snap[6]}
end

return redis.error_reply('ERR cuebox receiver.lua: unknown op ' .. tostring(op))
