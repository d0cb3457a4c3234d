//! Where ledgers live: in this process, or in Redis shared by every weir
//! instance. Both run the arithmetic of `ledger.rs` (Redis as one Lua script
//! per decision, over all of a request's ledgers at once, so a reservation
//! is all or nothing across instances too).

use super::ledger::{Amount, Dim, Ledger, Limit, Standing, Wait, Window};
use crate::plugins::redis::{LazyRedis, Script};
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Reservations are leased by the minute for an hour: one whose settlement
/// never comes (an instance that died holding it) is let go after that.
pub const LEASE: Window = Window {
    width_ms: 60_000,
    slots: 60,
};

/// One ledger a decision touches: a limit the request falls under.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The ledger's name in the store (limit, window, subject).
    pub key: String,
    pub window: Window,
    pub limit: Limit,
}

/// The answer to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Reserved in lease sub-bucket `at`; `standing` is before the reservation.
    Admitted { at: u64, standing: Standing },
    /// Nothing reserved; `standing.short` says which limit and when.
    Refused(Standing),
}

/// A ledger's balance, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub key: String,
    pub spent: Amount,
    pub reserved: Amount,
}

/// The store could not decide: Redis did not answer in time or failed, or
/// the memory store is full of ledgers still in use.
#[derive(Debug)]
pub struct StoreError(pub String);

/// Ledgers in this process. One store per plugin name lives as long as some
/// instance of that plugin does, so a reload that changes a limit keeps
/// what was spent (a new instance finds the store of the one it replaces).
pub struct MemoryStore {
    ledgers: Mutex<HashMap<String, (Ledger, Window)>>,
    max_keys: AtomicU64,
    epoch: Instant,
}

static MEMORY_STORES: Lazy<Mutex<HashMap<String, Weak<MemoryStore>>>> = Lazy::new(Default::default);

impl MemoryStore {
    /// A store of at most `max_keys` ledgers.
    pub fn new(max_keys: u64) -> MemoryStore {
        MemoryStore {
            ledgers: Mutex::new(HashMap::new()),
            max_keys: AtomicU64::new(max_keys.max(1)),
            epoch: Instant::now(),
        }
    }

    /// The store of plugin `name`: the live one if an instance still holds
    /// it (its bound updated), else a new one.
    pub fn shared(name: &str, max_keys: u64) -> Arc<MemoryStore> {
        let mut stores = MEMORY_STORES.lock();
        stores.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = stores.get(name).and_then(Weak::upgrade) {
            s.max_keys.store(max_keys.max(1), Ordering::Relaxed);
            return s;
        }
        let s = Arc::new(MemoryStore::new(max_keys));
        stores.insert(name.to_string(), Arc::downgrade(&s));
        s
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Ledgers held now.
    pub fn ledger_count(&self) -> usize {
        self.ledgers.lock().len()
    }

    /// Make room for `need` new ledgers: forget the empty ones, and fail if
    /// that is not enough (forgetting one in use would forget its spend).
    fn room(map: &mut HashMap<String, (Ledger, Window)>, need: usize, max: u64, now_ms: u64) -> Result<(), StoreError> {
        if (map.len() + need) as u64 <= max {
            return Ok(());
        }
        map.retain(|_, (l, w)| {
            l.advance(*w, LEASE, now_ms);
            !l.is_empty()
        });
        if (map.len() + need) as u64 <= max {
            Ok(())
        } else {
            Err(StoreError(format!(
                "the memory store holds {} ledgers in use (max_keys {max})",
                map.len()
            )))
        }
    }

    /// Reserve `need` on every ledger of `entries`, or on none.
    pub fn reserve(&self, entries: &[Entry], need: Amount) -> Result<Decision, StoreError> {
        let now = self.now_ms();
        let mut map = self.ledgers.lock();
        let new = entries.iter().filter(|e| !map.contains_key(&e.key)).count();
        Self::room(&mut map, new, self.max_keys.load(Ordering::Relaxed), now)?;
        let mut standing = Standing::default();
        for (i, e) in entries.iter().enumerate() {
            let l = ledger(&mut map, e, now);
            standing.add(i, l.check(e.window, e.limit, need, now));
        }
        if standing.short.is_some() {
            return Ok(Decision::Refused(standing));
        }
        let mut at = 0;
        for e in entries {
            at = ledger(&mut map, e, now).reserve(need);
        }
        Ok(Decision::Admitted { at, standing })
    }

    /// Swap the reservation made in lease sub-bucket `at` for what was spent.
    pub fn settle(&self, entries: &[Entry], at: u64, reserved: Amount, spent: Amount) -> Result<(), StoreError> {
        let now = self.now_ms();
        let mut map = self.ledgers.lock();
        let new = entries.iter().filter(|e| !map.contains_key(&e.key)).count();
        Self::room(&mut map, new, self.max_keys.load(Ordering::Relaxed), now)?;
        for e in entries {
            ledger(&mut map, e, now).settle(at, reserved, spent);
        }
        Ok(())
    }

    /// Balances of the ledgers whose key starts with `prefix`: the first
    /// `max` by spend (cost, then tokens), and how many there are.
    pub fn balances(&self, prefix: &str, max: usize) -> (Vec<Balance>, usize) {
        let now = self.now_ms();
        let mut map = self.ledgers.lock();
        let mut all: Vec<Balance> = map
            .iter_mut()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, (l, w))| {
                l.advance(*w, LEASE, now);
                Balance {
                    key: k[prefix.len()..].to_string(),
                    spent: l.spent.total(),
                    reserved: l.reserved.total(),
                }
            })
            .collect();
        drop(map);
        let total = all.len();
        all.sort_by(|a, b| (b.spent.cost, b.spent.tokens, &a.key).cmp(&(a.spent.cost, a.spent.tokens, &b.key)));
        all.truncate(max);
        (all, total)
    }
}

/// The ledger of `e` (made if new), moved to `now_ms`.
fn ledger<'m>(map: &'m mut HashMap<String, (Ledger, Window)>, e: &Entry, now_ms: u64) -> &'m mut Ledger {
    if !map.contains_key(&e.key) {
        map.insert(e.key.clone(), (Ledger::new(e.window, LEASE), e.window));
    }
    let (l, w) = map.get_mut(&e.key).expect("inserted above");
    l.advance(*w, LEASE, now_ms);
    l
}

/// The ledger arithmetic of `ledger.rs` over Redis hashes, one call per
/// decision. A ledger is one hash: for each ring `p` (`s` spent, `r`
/// reserved) its head index `ph`, running totals `pT` and `pC`, and
/// sub-bucket amounts `pt<index>` and `pc<index>`. Times come from Redis's
/// clock, so every instance sees the same windows. Amounts change only
/// through HINCRBY with integer strings (the arguments as given, or the
/// stored values), so they stay exact in 64 bits; Lua's doubles only
/// compare them (exact below 2^53: nine million units of money).
///
/// ARGV: op, lease width, lease slots, then per op:
/// - `reserve`: need tokens, need cost, and per ledger width, slots, token
///   limit, cost limit (-1: none). Returns `{1, room_t, room_c, at}` or
///   `{0, room_t, room_c, line, dim, wait kind, wait ms}` (room before the
///   request, -1 for no limit; wait kind 0 after ms, 1 in flight, 2 never).
/// - `settle`: at, reserved tokens, reserved cost, spent tokens, spent cost,
///   and per ledger width, slots. Returns `{1}`.
/// - `peek`: per ledger width, slots. Returns spent and reserved tokens and
///   cost for each ledger (zeros for one that does not exist).
const SCRIPT: &str = r#"
local op = ARGV[1]
local LW, LN = tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local DIMS = {'t', 'c'}

local function num(k, f)
  return tonumber(redis.call('HGET', k, f)) or 0
end

-- Add the integer string v (a count, or '-' and a count) to a sub-bucket
-- of ring p and to its total.
local function add(k, p, d, idx, v)
  if v ~= nil and v ~= '0' and v ~= '-0' then
    redis.call('HINCRBY', k, p .. d .. idx, v)
    redis.call('HINCRBY', k, p .. string.upper(d), v)
  end
end

-- Move ring p of ledger k to now: sub-buckets that left the window leave
-- the totals. Returns the head index (never behind the stored one).
local function advance(k, p, w, n)
  local cur = math.floor(now / w)
  local head = tonumber(redis.call('HGET', k, p .. 'h'))
  if head ~= nil and cur <= head then
    return head
  end
  if head ~= nil then
    for idx = head - n + 1, math.min(head, cur - n) do
      for _, d in ipairs(DIMS) do
        local v = redis.call('HGET', k, p .. d .. idx)
        if v then
          if v ~= '0' then
            redis.call('HINCRBY', k, p .. string.upper(d), '-' .. v)
          end
          redis.call('HDEL', k, p .. d .. idx)
        end
      end
    end
  end
  redis.call('HSET', k, p .. 'h', cur)
  return cur
end

local function expire(k, w, n)
  redis.call('PEXPIRE', k, math.max(w * n, LW * LN) + w)
end

-- Ms until enough spend leaves for left + others + need <= lim; -1: never.
local function room_after(k, w, n, head, d, left, others, need, lim)
  if left + others + need <= lim then
    return 0
  end
  for idx = head - n + 1, head do
    left = left - (tonumber(redis.call('HGET', k, 's' .. d .. idx)) or 0)
    if left + others + need <= lim then
      return math.max((idx + n) * w - now, 0)
    end
  end
  return -1
end

if op == 'reserve' then
  local need = {tonumber(ARGV[4]), tonumber(ARGV[5])}
  local room = {-1, -1}
  local worst, wline, wdim, wkind, wms = -1, 0, 0, 0, 0
  for i = 1, #KEYS do
    local k, a = KEYS[i], 6 + (i - 1) * 4
    local w, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    local lims = {tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])}
    local head = advance(k, 's', w, n)
    advance(k, 'r', LW, LN)
    local spent = {num(k, 'sT'), num(k, 'sC')}
    local res = {num(k, 'rT'), num(k, 'rC')}
    for d = 1, 2 do
      local lim = lims[d]
      if lim >= 0 then
        local used = spent[d] + res[d]
        local r = math.max(lim - used, 0)
        if room[d] < 0 or r < room[d] then
          room[d] = r
        end
        if used + need[d] > lim then
          local kind, ms = 0, 0
          if need[d] > lim then
            kind = 2
          else
            ms = room_after(k, w, n, head, DIMS[d], spent[d], res[d], need[d], lim)
            if ms < 0 then
              kind, ms = 1, 0
            end
          end
          local rank = ms
          if kind == 1 then rank = 1e15 elseif kind == 2 then rank = 2e15 end
          if rank > worst then
            worst, wline, wdim, wkind, wms = rank, i - 1, d - 1, kind, ms
          end
        end
      end
    end
  end
  if worst >= 0 then
    return {0, room[1], room[2], wline, wdim, wkind, wms}
  end
  local at = 0
  for i = 1, #KEYS do
    local k, a = KEYS[i], 6 + (i - 1) * 4
    at = num(k, 'rh')
    add(k, 'r', 't', at, ARGV[4])
    add(k, 'r', 'c', at, ARGV[5])
    expire(k, tonumber(ARGV[a]), tonumber(ARGV[a + 1]))
  end
  return {1, room[1], room[2], at}
elseif op == 'settle' then
  local at = tonumber(ARGV[4])
  for i = 1, #KEYS do
    local k, a = KEYS[i], 9 + (i - 1) * 2
    local w, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    local head = advance(k, 's', w, n)
    local rhead = advance(k, 'r', LW, LN)
    if at <= rhead and at + LN > rhead then
      -- Take back the reservation, or what its sub-bucket still holds if less.
      for j, d in ipairs(DIMS) do
        local held = redis.call('HGET', k, 'r' .. d .. ARGV[4])
        if held then
          local back = ARGV[4 + j]
          if tonumber(held) < tonumber(back) then
            back = held
          end
          add(k, 'r', d, ARGV[4], '-' .. back)
        end
      end
    end
    add(k, 's', 't', head, ARGV[7])
    add(k, 's', 'c', head, ARGV[8])
    expire(k, w, n)
  end
  return {1}
elseif op == 'peek' then
  local out = {}
  for i = 1, #KEYS do
    local k, a = KEYS[i], 4 + (i - 1) * 2
    if redis.call('EXISTS', k) == 1 then
      advance(k, 's', tonumber(ARGV[a]), tonumber(ARGV[a + 1]))
      advance(k, 'r', LW, LN)
      -- As stored (strings): exact past 2^53.
      for _, f in ipairs({'sT', 'sC', 'rT', 'rC'}) do
        out[#out + 1] = redis.call('HGET', k, f) or '0'
      end
    else
      for _ = 1, 4 do
        out[#out + 1] = '0'
      end
    end
  end
  return out
end
return redis.error_reply('unknown op ' .. tostring(op))
"#;

/// Ledgers in Redis, shared by every weir instance that names the same
/// store and plugin.
pub struct RedisStore {
    redis: LazyRedis,
    script: Script,
    prefix: String,
    timeout: Duration,
}

/// The longest a decision waits for Redis before the outage policy applies,
/// unless the plugin's `store_timeout` says otherwise. Longer than a rate
/// limiter's (200 ms): a money decision is worth a short wait, and a burst
/// of a thousand admissions at once on a small machine queues for a few
/// hundred milliseconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);

impl RedisStore {
    /// Ledger `k` is the Redis key `{prefix}{k}`.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisStore, String> {
        Ok(RedisStore {
            redis: LazyRedis::with_response_timeout(url, timeout)?,
            timeout,
            script: Script::new(SCRIPT),
            prefix: prefix.to_string(),
        })
    }

    fn invocation(&self, op: &str, entries: &[Entry]) -> redis::ScriptInvocation<'_> {
        let mut inv = self.script.prepare();
        for e in entries {
            inv.key(format!("{}{}", self.prefix, e.key));
        }
        inv.arg(op).arg(LEASE.width_ms).arg(LEASE.slots);
        inv
    }

    async fn run(&self, inv: redis::ScriptInvocation<'_>) -> Result<Vec<i64>, StoreError> {
        let fut = async {
            let mut conn = self.redis.conn().await?;
            self.script.invoke::<Vec<i64>>(&inv, &mut conn).await
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| StoreError("redis timed out".into()))?
            .map_err(|e| StoreError(e.to_string()))
    }

    /// As [`MemoryStore::reserve`], atomically across instances.
    pub async fn reserve(&self, entries: &[Entry], need: Amount) -> Result<Decision, StoreError> {
        let mut inv = self.invocation("reserve", entries);
        inv.arg(need.tokens).arg(need.cost);
        for e in entries {
            let lim = |v: Option<u64>| v.map_or(-1, |v| v as i64);
            inv.arg(e.window.width_ms)
                .arg(e.window.slots)
                .arg(lim(e.limit.tokens))
                .arg(lim(e.limit.cost));
        }
        let v = self.run(inv).await?;
        decode_reserve(&v).ok_or_else(|| StoreError(format!("unexpected reply from the budget script: {v:?}")))
    }

    /// As [`MemoryStore::settle`].
    pub async fn settle(&self, entries: &[Entry], at: u64, reserved: Amount, spent: Amount) -> Result<(), StoreError> {
        let mut inv = self.invocation("settle", entries);
        inv.arg(at)
            .arg(reserved.tokens)
            .arg(reserved.cost)
            .arg(spent.tokens)
            .arg(spent.cost);
        for e in entries {
            inv.arg(e.window.width_ms).arg(e.window.slots);
        }
        self.run(inv).await.map(drop)
    }

    /// Balances of these ledgers (`key` is the entry's key).
    pub async fn balances(&self, entries: &[Entry]) -> Result<Vec<Balance>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.invocation("peek", entries);
        for e in entries {
            inv.arg(e.window.width_ms).arg(e.window.slots);
        }
        let v = self.run(inv).await?;
        if v.len() != entries.len() * 4 {
            return Err(StoreError(format!("unexpected reply from the budget script: {v:?}")));
        }
        let n = |x: i64| x.max(0) as u64;
        Ok(entries
            .iter()
            .zip(v.chunks(4))
            .map(|(e, c)| Balance {
                key: e.key.clone(),
                spent: Amount {
                    tokens: n(c[0]),
                    cost: n(c[1]),
                },
                reserved: Amount {
                    tokens: n(c[2]),
                    cost: n(c[3]),
                },
            })
            .collect())
    }
}

/// The script's answer to `reserve`.
fn decode_reserve(v: &[i64]) -> Option<Decision> {
    let room = |x: i64| u64::try_from(x).ok();
    let standing = |short| -> Option<Standing> {
        Some(Standing {
            room: [room(*v.get(1)?), room(*v.get(2)?)],
            short,
        })
    };
    match v.first()? {
        1 => Some(Decision::Admitted {
            at: u64::try_from(*v.get(3)?).ok()?,
            standing: standing(None)?,
        }),
        0 => {
            let dim = match v.get(4)? {
                0 => Dim::Tokens,
                _ => Dim::Cost,
            };
            let wait = match v.get(5)? {
                0 => Wait::After(u64::try_from(*v.get(6)?).unwrap_or(0)),
                1 => Wait::InFlight,
                _ => Wait::Never,
            };
            let line = usize::try_from(*v.get(3)?).ok()?;
            Some(Decision::Refused(standing(Some((line, dim, wait)))?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Window = Window {
        width_ms: 60_000,
        slots: 60,
    };

    fn entry(key: &str, tokens: u64) -> Entry {
        Entry {
            key: key.to_string(),
            window: HOUR,
            limit: Limit {
                tokens: Some(tokens),
                cost: None,
            },
        }
    }

    fn need(tokens: u64) -> Amount {
        Amount { tokens, cost: 0 }
    }

    #[test]
    fn all_or_nothing_across_ledgers() {
        let s = MemoryStore::new(100);
        let (key, global) = (entry("key:a", 100), entry("global:", 150));
        let Ok(Decision::Admitted { at, .. }) = s.reserve(&[key.clone(), global.clone()], need(100)) else {
            panic!("fits both")
        };
        // The key's ledger is full; the global one must not take the 40 either.
        let other = entry("key:b", 100);
        assert!(matches!(
            s.reserve(&[key.clone(), global.clone()], need(40)),
            Ok(Decision::Refused(_))
        ));
        assert!(matches!(
            s.reserve(&[other.clone(), global.clone()], need(50)),
            Ok(Decision::Admitted { .. })
        ));
        s.settle(&[key.clone(), global.clone()], at, need(100), need(10))
            .unwrap();
        let (b, n) = s.balances("key:", 10);
        assert_eq!(n, 2);
        let a = b.iter().find(|b| b.key == "a").unwrap();
        assert_eq!((a.spent.tokens, a.reserved.tokens), (10, 0));
        let (g, _) = s.balances("global:", 10);
        assert_eq!((g[0].spent.tokens, g[0].reserved.tokens), (10, 50));
    }

    #[test]
    fn bounded_by_max_keys_forgetting_only_empty_ledgers() {
        let s = MemoryStore::new(2);
        let Ok(Decision::Admitted { at, .. }) = s.reserve(&[entry("a", 10)], need(5)) else {
            panic!()
        };
        s.settle(&[entry("a", 10)], at, need(5), need(0)).unwrap();
        assert!(s.reserve(&[entry("b", 10)], need(5)).is_ok());
        // "a" is empty again: forgotten to make room for "c".
        assert!(s.reserve(&[entry("c", 10)], need(5)).is_ok());
        assert_eq!(s.ledger_count(), 2);
        // "b" and "c" hold reservations: no room, and nothing is forgotten.
        assert!(s.reserve(&[entry("d", 10)], need(5)).is_err());
        assert_eq!(s.ledger_count(), 2);
    }

    #[test]
    fn a_reloaded_plugin_keeps_its_store() {
        let a = MemoryStore::shared("budget-test-reload", 10);
        assert!(a.reserve(&[entry("k", 10)], need(7)).is_ok());
        let b = MemoryStore::shared("budget-test-reload", 20);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(matches!(
            b.reserve(&[entry("k", 10)], need(7)),
            Ok(Decision::Refused(_))
        ));
        drop((a, b));
        let c = MemoryStore::shared("budget-test-reload", 10);
        assert_eq!(c.ledger_count(), 0, "no instance held it: a new store");
    }

    #[test]
    fn reserve_reply_decoding() {
        assert_eq!(
            decode_reserve(&[1, 90, -1, 7]),
            Some(Decision::Admitted {
                at: 7,
                standing: Standing {
                    room: [Some(90), None],
                    short: None
                }
            })
        );
        assert_eq!(
            decode_reserve(&[0, 0, 5, 1, 1, 0, 1500]),
            Some(Decision::Refused(Standing {
                room: [Some(0), Some(5)],
                short: Some((1, Dim::Cost, Wait::After(1500)))
            }))
        );
        assert_eq!(decode_reserve(&[0, 0]), None);
        assert_eq!(decode_reserve(&[]), None);
    }
}
