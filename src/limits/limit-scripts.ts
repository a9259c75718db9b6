import type { RequestAnswer } from "./request-allowance.js";
import type { StreamAnswer } from "./stream-allowance.js";
import type { TokenAnswer } from "./token-allowance.js";

/*
 * The Lua scripts of the shared limits (docs/architecture.md, "Redis keys and channels"). Each
 * touches one key, so Redis Cluster works, and reads Redis server TIME, so the replicas' clocks
 * never meet (as slot leases do; TIME before writes needs effects replication, the default since
 * Redis 5). Replies are integers (Lua numbers would be truncated on the way out): fractional
 * tokens travel as thousandths.
 */

const NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)";

/**
 * The shared token bucket of a principal's requests, a hash: `t` tokens (may be negative), `ts`
 * when they were counted, and `o:<replica>` = "count|expiry" for the tokens each replica has
 * leased and not used. The bucket refills up to burst minus every live lease, so tokens in the
 * bucket plus tokens out on lease never pass the burst.
 *
 * KEYS[1]; ARGV = replica, rate per second, burst, used, debt, refund, want, leaseMs →
 * { granted, held by this replica, tokens × 1000, ms until one token }.
 */
export const REQUEST_SCRIPT = `${NOW}
local rate = tonumber(ARGV[2]) / 1000
local burst = tonumber(ARGV[3])
local used, debt, refund, want = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local lease = tonumber(ARGV[8])
local me = 'o:' .. ARGV[1]
local tokens, ts, others, mine = burst, now, 0, 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if f == 't' then tokens = tonumber(v)
  elseif f == 'ts' then ts = tonumber(v)
  else
    local bar = string.find(v, '|', 1, true)
    local n, exp = tonumber(string.sub(v, 1, bar - 1)), tonumber(string.sub(v, bar + 1))
    if exp <= now then redis.call('HDEL', KEYS[1], f)
    elseif f == me then mine = n
    else others = others + n end
  end
end
refund = math.min(refund, mine)
mine = math.max(0, mine - refund - used)
if now > ts then tokens = tokens + (now - ts) * rate end
tokens = math.min(tokens + refund, burst - others - mine) - debt
local grant = 0
if tokens >= 1 then grant = math.min(want, math.floor(tokens)) end
tokens = tokens - grant
mine = mine + grant
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', now)
if mine > 0 then redis.call('HSET', KEYS[1], me, mine .. '|' .. (now + lease)) else redis.call('HDEL', KEYS[1], me) end
local wait = 0
if tokens < 1 then wait = math.ceil((1 - tokens) / rate) end
redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(0, burst - tokens) / rate) + lease)
return {grant, mine, math.floor(tokens * 1000), wait}`;

/**
 * A principal's stream slots, a hash of `<replica>` = "reserved|expiry". A replica gets what it
 * wants as far as the others leave room under the limit, and never less than it has open (what
 * runs is counted, even past the limit, so the others hold back until it drains).
 *
 * KEYS[1]; ARGV = replica, limit, open, want, leaseMs → { reserved by this replica, reserved by the others }.
 */
export const STREAM_SCRIPT = `${NOW}
local max, open, want, lease = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local others = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if f ~= ARGV[1] then
    local bar = string.find(v, '|', 1, true)
    if tonumber(string.sub(v, bar + 1)) <= now then redis.call('HDEL', KEYS[1], f)
    else others = others + tonumber(string.sub(v, 1, bar - 1)) end
  end
end
local mine = math.max(open, math.min(want, math.max(0, max - others)))
if mine > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], mine .. '|' .. (now + lease))
  redis.call('PEXPIRE', KEYS[1], lease)
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return {mine, others}`;

/**
 * A principal's token use, a hash: `m`/`mu` the current UTC minute and its tokens, `d`/`du` the
 * current UTC day and its tokens; a new window starts at 0.
 *
 * KEYS[1]; ARGV = tokens to charge → { minute's tokens, day's tokens, ms left in the minute, ms left in the day }.
 */
export const TOKEN_SCRIPT = `${NOW}
local charge = tonumber(ARGV[1])
local minute, day = math.floor(now / 60000), math.floor(now / 86400000)
local h = redis.call('HMGET', KEYS[1], 'm', 'mu', 'd', 'du')
local mu, du = 0, 0
if tonumber(h[1]) == minute then mu = tonumber(h[2]) end
if tonumber(h[3]) == day then du = tonumber(h[4]) end
mu, du = mu + charge, du + charge
redis.call('HSET', KEYS[1], 'm', minute, 'mu', mu, 'd', day, 'du', du)
local dayLeft = (day + 1) * 86400000 - now
redis.call('PEXPIRE', KEYS[1], dayLeft + 60000)
return {mu, du, (minute + 1) * 60000 - now, dayLeft}`;

/**
 * The replicas that enforce limits, a sorted set of replica ids scored by expiry: each adds itself
 * every heartbeat, so the count of live members is the N a replica divides limits by while Redis
 * is unreachable and the share it reserves ahead.
 *
 * KEYS[1]; ARGV = replica, ttlMs → live replicas.
 */
export const HEARTBEAT_SCRIPT = `${NOW}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])`;

function ints(reply: unknown, n: number): number[] | undefined {
  if (!Array.isArray(reply) || reply.length !== n) return undefined;
  const out = reply.map((v) => (typeof v === "number" ? v : Number(v)));
  return out.every(Number.isFinite) ? out : undefined;
}

/** Reads REQUEST_SCRIPT's reply; undefined when it is not one. */
export function requestAnswerOf(reply: unknown): RequestAnswer | undefined {
  const v = ints(reply, 4);
  return v && { grant: v[0]!, held: v[1]!, tokens: v[2]! / 1000, waitMs: v[3]! };
}

/** Reads STREAM_SCRIPT's reply. */
export function streamAnswerOf(reply: unknown): StreamAnswer | undefined {
  const v = ints(reply, 2);
  return v && { mine: v[0]!, others: v[1]! };
}

/** Reads TOKEN_SCRIPT's reply. */
export function tokenAnswerOf(reply: unknown): TokenAnswer | undefined {
  const v = ints(reply, 4);
  return v && { minuteUsed: v[0]!, dayUsed: v[1]!, minuteMsLeft: v[2]!, dayMsLeft: v[3]! };
}
