"""The chat cluster's shared state in Redis, changed only by these Lua scripts.

Each script runs atomically in Redis, so a nick is claimed by exactly one member
however many servers try at once, a member's room and nick change together with
the notice that says so, and a dead server is reaped once. Every notice is
PUBLISHed from inside the script that made the change: on the room's channel it
takes its place among the room's messages in the one order all servers see.

Keys (``P`` is :data:`PREFIX`; ``K`` a nick's or a room's key, see
:func:`netproto.chat.state.nameKey`; ``S`` a server's id; ``M`` a member's id,
``S:N``):

==================  ====================================================================
``P nick:K``        string: ``M``, the member that owns the nick
``P m:S``           hash: ``M`` -> ``nickKey LF nick LF roomKey``, the members of server S
``P room:K``        sorted set: the nicks in the room, scored in join order
``P rooms``         hash: room key -> the room's name as its creator wrote it
``P h:K``           stream: the room's last messages (field ``l``), capped
``P seq``           counter: join order
``P guests``        counter: guest nick numbers
``P servers``       set: the servers that registered
``P alive:S``       string with a TTL: S is alive while it exists
==================  ====================================================================

Channels: ``P r:K``, one per room (the room's events); ``P s:S``, one per server
(what is for one of its members). A message is ``M SP KIND LINES``: M the member
it is about, KIND one byte (see :mod:`netproto.chat.cluster`), LINES wire lines.
"""

from __future__ import annotations

#: Prefix of every key and channel, so the chat can share a Redis database.
PREFIX = "netproto:chat:"

_PRELUDE = r"""
local P = ARGV[1]
local function rec(server, member)
  local v = redis.call('HGET', P..'m:'..server, member)
  if not v then return nil end
  return string.match(v, '^(.-)\n(.-)\n(.*)$')
end
local function pub(channel, member, kind, lines)
  redis.call('PUBLISH', P..channel, member..' '..kind..lines)
end
local function shown(roomKey)
  return redis.call('HGET', P..'rooms', roomKey) or roomKey
end
local function leaveRoom(member, nick, roomKey, kind, line)
  redis.call('ZREM', P..'room:'..roomKey, nick)
  pub('r:'..roomKey, member, kind, line)
  if redis.call('EXISTS', P..'room:'..roomKey) == 0 then
    redis.call('HDEL', P..'rooms', roomKey)
    redis.call('DEL', P..'h:'..roomKey)
  end
end
local function enterRoom(member, nick, roomKey, roomName)
  redis.call('HSETNX', P..'rooms', roomKey, roomName)
  local name = redis.call('HGET', P..'rooms', roomKey)
  local new = false
  if not redis.call('ZSCORE', P..'room:'..roomKey, nick) then
    redis.call('ZADD', P..'room:'..roomKey, redis.call('INCR', P..'seq'), nick)
    new = true
  end
  return name, new
end
local function history(roomKey, prefix)
  local out = {}
  for _, entry in ipairs(redis.call('XRANGE', P..'h:'..roomKey, '-', '+')) do
    out[#out + 1] = prefix..entry[2][2]
  end
  return table.concat(out)
end
local function quitMember(server, member, reason)
  local nickKey, nick, roomKey = rec(server, member)
  if not nickKey then return 0 end
  if redis.call('GET', P..'nick:'..nickKey) == member then
    redis.call('DEL', P..'nick:'..nickKey)
  end
  redis.call('HDEL', P..'m:'..server, member)
  leaveRoom(member, nick, roomKey, 'n', '*** '..nick..' has quit ('..reason..')\r\n')
  return 1
end
"""

# ARGV: P, server, member, nickKey, nick, roomKey, roomName, mode, historyPrefix.
# Claims the nick and puts the member in the room. Mode 'w' (a new connection):
# the member's server gets the welcome and the history on its channel ('h').
# Mode 'r' (re-registering a member after the link came back): no welcome, and a
# join notice only if the room did not list it. Returns 0 if the nick is taken.
CLAIM = r"""
local server, member, nickKey, nick, roomKey, roomName, mode = unpack(ARGV, 2, 8)
local owner = redis.call('GET', P..'nick:'..nickKey)
if owner and owner ~= member then return 0 end
local oldKey, oldNick, oldRoom = rec(server, member)
if oldKey and oldKey ~= nickKey and redis.call('GET', P..'nick:'..oldKey) == member then
  redis.call('DEL', P..'nick:'..oldKey)
end
if oldRoom and (oldRoom ~= roomKey or oldNick ~= nick) then
  leaveRoom(member, oldNick, oldRoom, 'n', '*** '..oldNick..' has left #'..shown(oldRoom)..'\r\n')
end
redis.call('SET', P..'nick:'..nickKey, member)
redis.call('HSET', P..'m:'..server, member, nickKey..'\n'..nick..'\n'..roomKey)
local name, new = enterRoom(member, nick, roomKey, roomName)
if new then pub('r:'..roomKey, member, 'j', '*** '..nick..' has joined #'..name..'\r\n') end
if mode == 'w' then
  pub('s:'..server, member, 'h', name..'\n*** Welcome to netproto chat. You are '..nick..
      ' in #'..name..'. /help for commands.\r\n'..history(roomKey, ARGV[9]))
end
return 1
"""

# ARGV: P, server, member, roomKey, roomName, historyPrefix. Leaves the member's
# room ('p' on its channel), enters the new one ('j' on its channel), and sends the
# joiner's server its join notice and the history ('h'). 0: not registered.
JOIN = r"""
local server, member, roomKey, roomName = unpack(ARGV, 2, 5)
local nickKey, nick, oldRoom = rec(server, member)
if not nickKey then return 0 end
leaveRoom(member, nick, oldRoom, 'p', '*** '..nick..' has left #'..shown(oldRoom)..'\r\n')
redis.call('HSET', P..'m:'..server, member, nickKey..'\n'..nick..'\n'..roomKey)
local name = enterRoom(member, nick, roomKey, roomName)
local joined = '*** '..nick..' has joined #'..name..'\r\n'
pub('r:'..roomKey, member, 'j', joined)
pub('s:'..server, member, 'h', name..'\n'..joined..history(roomKey, ARGV[6]))
return 1
"""

# ARGV: P, server, member, newKey, newNick. 1: renamed (the room hears it);
# 0: the nick is taken; -1: the member is not registered.
RENAME = r"""
local server, member, newKey, newNick = unpack(ARGV, 2, 5)
local nickKey, nick, roomKey = rec(server, member)
if not nickKey then return -1 end
local owner = redis.call('GET', P..'nick:'..newKey)
if owner and owner ~= member then return 0 end
if newKey ~= nickKey then redis.call('DEL', P..'nick:'..nickKey) end
redis.call('SET', P..'nick:'..newKey, member)
local room = P..'room:'..roomKey
local score = redis.call('ZSCORE', room, nick) or redis.call('INCR', P..'seq')
redis.call('ZREM', room, nick)
redis.call('ZADD', room, score, newNick)
redis.call('HSET', P..'m:'..server, member, newKey..'\n'..newNick..'\n'..roomKey)
pub('r:'..roomKey, member, 'n', '*** '..nick..' is now known as '..newNick..'\r\n')
return 1
"""

# ARGV: P, server, member, reason. The member quits: its room hears why.
LEAVE = r"""
return quitMember(ARGV[2], ARGV[3], ARGV[4])
"""

# ARGV: P, roomKey, member, line, historyLength. A message: into the room's
# history (if the room exists and history is on), and onto its channel: one
# PUBLISH per line, however many members.
SAY = r"""
local roomKey, member, line, keep = unpack(ARGV, 2, 5)
if keep ~= '0' and redis.call('EXISTS', P..'room:'..roomKey) == 1 then
  redis.call('XADD', P..'h:'..roomKey, 'MAXLEN', keep, '*', 'l', line)
end
pub('r:'..roomKey, member, 'm', line)
"""

# ARGV: P, nickKey, line. A private message to whoever owns the nick, on its
# server's channel. 0: no such nick.
TELL = r"""
local owner = redis.call('GET', P..'nick:'..ARGV[2])
if not owner then return 0 end
pub('s:'..string.match(owner, '^(.*):'), owner, 't', ARGV[3])
return 1
"""

# ARGV: P. Every room's name and member count, as a flat list.
ROOMS = r"""
local out = {}
local all = redis.call('HGETALL', P..'rooms')
for i = 1, #all, 2 do
  out[#out + 1] = all[i + 1]
  out[#out + 1] = redis.call('ZCARD', P..'room:'..all[i])
end
return out
"""

# ARGV: P, server, ttlMs, mayReap. Says this server is alive for ttlMs more, and
# (mayReap '1') reaps every server whose presence expired: each of its members
# quits '(server lost)'. Returns {1 if this server was not registered, servers reaped}.
HEARTBEAT = r"""
local server, ttl, mayReap = unpack(ARGV, 2, 4)
redis.call('SET', P..'alive:'..server, '1', 'PX', ttl)
local added = redis.call('SADD', P..'servers', server)
local reaped = 0
if mayReap == '1' then
  for _, other in ipairs(redis.call('SMEMBERS', P..'servers')) do
    if redis.call('EXISTS', P..'alive:'..other) == 0 then
      for _, member in ipairs(redis.call('HKEYS', P..'m:'..other)) do
        quitMember(other, member, 'server lost')
      end
      redis.call('DEL', P..'m:'..other)
      redis.call('SREM', P..'servers', other)
      reaped = reaped + 1
    end
  end
end
return {added, reaped}
"""

# ARGV: P, server, reason. The server leaves the cluster (shutting down): each of
# its members quits with the reason.
GOODBYE = r"""
local server = ARGV[2]
for _, member in ipairs(redis.call('HKEYS', P..'m:'..server)) do
  quitMember(server, member, ARGV[3])
end
redis.call('DEL', P..'m:'..server, P..'alive:'..server)
redis.call('SREM', P..'servers', server)
return 1
"""

#: Every script by name, each with the shared functions before it.
SCRIPTS: dict[str, str] = {
    name: _PRELUDE + body
    for name, body in {
        "claim": CLAIM,
        "join": JOIN,
        "rename": RENAME,
        "leave": LEAVE,
        "say": SAY,
        "tell": TELL,
        "rooms": ROOMS,
        "heartbeat": HEARTBEAT,
        "goodbye": GOODBYE,
    }.items()
}
