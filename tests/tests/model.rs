//! Model-based test: random sequences of session operations and faults run against a real
//! `TieredStore` (a private `redis-server` as cache, a private Postgres cluster as durable
//! tier, a manual clock), every answer checked against a reference model.
//!
//! The model maps each session the sequence made to the set of values a load may return:
//! `Some(n)` for a live session whose data is `{"n": n}`, `None` for a deleted (or never
//! created) one. A successful write sets it to the one value written; a write that failed
//! may or may not have been applied, so both the old and the new value stay acceptable
//! until a later successful load or write tells which. Every `n` is unique to the session
//! that wrote it (session index × 1000 + write count), so serving another session's data is
//! a wrong value.
//!
//! The checks, on every load:
//! - Postgres up (Redis up, hung or down): the load succeeds with an acceptable value, at
//!   all times, including while the store switches to Postgres and back to Redis;
//! - Postgres down, Redis up: an acceptable value or an error, never a wrong value;
//! - Postgres down, Redis hung or down: an error.
//!
//! and on every write: acknowledged with Postgres up, refused with Postgres down. At the end
//! of each sequence both servers are brought back, the store is waited back onto the cache,
//! and every session must load as the model says, and the durable tier must hold the same.
//! The clock advances less than the idle timeout per sequence, so the model needs no expiry.
//!
//! Each sequence comes from a seed. A failure names the test, the seed, the generated
//! operations and what each executed one returned, and how long it took. To rerun one seed:
//! `MODEL_SEED=17 cargo test -p tiered-sessions-tests --test model <test name> -- --nocapture`
//! (the servers' timing varies, so a failure that needs a race may take a few reruns).
//! `MODEL_CASES` sets how many seeds, `0..MODEL_CASES`, each test runs (default 40 for the
//! cache faults, 15 with Postgres outages: about a minute in all), and `MODEL_LOG=1` prints
//! every sequence's log, failing or not.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::{Display, Write as _},
    sync::{Arc, Mutex as StdMutex},
    time::{Duration, Instant},
};

use fred::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tiered_sessions::{
    tower_sessions::{
        session::{Id, Record},
        SessionStore,
    },
    Clock, DurableTier, PostgresDurable, RedisCache, StorageKey, TieredStore, REVISION_KEY,
};
use tiered_sessions_core::envelope;
use tiered_sessions_tests::{poll_until, PostgresCluster, RedisServer};
use time::OffsetDateTime;
use tokio::sync::Mutex;

/// One model test at a time: they kill and restart servers and share two cores.
static SERIAL: Mutex<()> = Mutex::const_new(());

const IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
const TOUCH_INTERVAL: Duration = Duration::from_secs(6 * 60);
/// A sequence advances the clock by less than this many minutes, well inside the idle
/// timeout, so no session expires and the model needs no notion of time.
const MAX_ADVANCE_MINUTES: u32 = 50;
/// How long the store may take to return to the cache once Redis and Postgres are up.
const BACK_ON_CACHE: Duration = Duration::from_secs(10);

// --- operations ------------------------------------------------------------------------------

/// One step of a sequence. Sessions are referred to by their index in the list of sessions
/// the sequence made (`Create` and `Cycle` each add one).
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Creates a session with data `{"n": n}`.
    Create(i64),
    /// Loads the session.
    Load(usize),
    /// Loads an id that was never created.
    LoadUnknown,
    /// Loads the session, sets `n` and saves it.
    Save(usize, i64),
    /// Deletes the session (a logout).
    Delete(usize),
    /// What `Session::cycle_id` does: deletes the session and creates it again, with the same
    /// data, under a new id (a new session index).
    Cycle(usize),
    /// Advances the manual clock by this many minutes.
    Tick(u32),
    /// `FLUSHALL`.
    Flush,
    /// `DEL` of the session's Redis key.
    Evict(usize),
    /// Flips one bit of the session's Redis value (chosen by the number), or plants garbage
    /// when there is none.
    Corrupt(usize, u16),
    /// Replaces the session's Redis value with a hash.
    WrongType(usize),
    /// Copies the second session's Redis value under the first one's key.
    Plant(usize, usize),
    /// SIGKILLs `redis-server`.
    RedisDown,
    /// Starts it again, empty, on the same port.
    RedisUp,
    /// SIGSTOPs `redis-server`: calls time out instead of being refused, and what the
    /// store sent meanwhile is applied when it resumes.
    RedisHang,
    /// SIGCONTs it; it comes back with its data.
    RedisResume,
    /// `pg_ctl stop -m fast`.
    PgDown,
    /// `pg_ctl start`.
    PgUp,
}

impl Op {
    /// The operation without its arguments, for the statistics.
    fn name(&self) -> String {
        let text = format!("{self:?}");
        match text.split_once('(') {
            Some((name, _)) => name.to_owned(),
            None => text,
        }
    }
}

/// The kinds of operation, for the weighted choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Create,
    Load,
    LoadUnknown,
    Save,
    Delete,
    Cycle,
    Tick,
    Flush,
    Evict,
    Corrupt,
    WrongType,
    Plant,
    RedisDown,
    RedisUp,
    RedisHang,
    RedisResume,
    PgDown,
    PgUp,
}

/// Operations on sessions and the cache faults, with their weights.
const CACHE_MIX: &[(Kind, u32)] = &[
    (Kind::Create, 10),
    (Kind::Load, 30),
    (Kind::LoadUnknown, 3),
    (Kind::Save, 20),
    (Kind::Delete, 6),
    (Kind::Cycle, 4),
    (Kind::Tick, 6),
    (Kind::Flush, 2),
    (Kind::Evict, 4),
    (Kind::Corrupt, 4),
    (Kind::WrongType, 2),
    (Kind::Plant, 2),
    // Redis stays down or hung for a few operations on average.
    (Kind::RedisDown, 3),
    (Kind::RedisUp, 20),
    (Kind::RedisHang, 2),
    (Kind::RedisResume, 20),
];

/// Added to [`CACHE_MIX`] for the test with Postgres outages: rare and short, as every
/// durable call during one waits out the pool's 2 s acquire timeout.
const POSTGRES_FAULTS: &[(Kind, u32)] = &[(Kind::PgDown, 2), (Kind::PgUp, 30)];

/// The state of the `redis-server` process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Redis {
    Up,
    /// Stopped (SIGSTOP).
    Hung,
    /// Killed.
    Down,
}

/// What generation needs to know to pick only operations that make sense next (a fault on
/// Redis needs it up, an outage needs the server up, `Save` needs a write count).
#[derive(Debug)]
struct Generator {
    rng: StdRng,
    /// Saves generated so far per session index.
    writes: Vec<i64>,
    redis: Redis,
    pg_up: bool,
    advanced_minutes: u32,
}

impl Generator {
    fn allows(&self, kind: Kind) -> bool {
        match kind {
            Kind::Flush
            | Kind::Evict
            | Kind::Corrupt
            | Kind::WrongType
            | Kind::Plant
            | Kind::RedisDown
            | Kind::RedisHang => self.redis == Redis::Up,
            Kind::RedisUp => self.redis == Redis::Down,
            Kind::RedisResume => self.redis == Redis::Hung,
            Kind::PgDown => self.pg_up,
            Kind::PgUp => !self.pg_up,
            Kind::Tick => self.advanced_minutes + 1 < MAX_ADVANCE_MINUTES,
            _ => true,
        }
    }

    fn pick(&mut self, mix: &[(Kind, u32)]) -> Kind {
        if self.writes.is_empty() {
            return Kind::Create;
        }
        let allowed: Vec<(Kind, u32)> = mix
            .iter()
            .copied()
            .filter(|(kind, _)| self.allows(*kind))
            .collect();
        let total: u32 = allowed.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.gen_range(0..total);
        for (kind, weight) in allowed {
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        unreachable!("the roll is below the total weight")
    }

    fn session(&mut self) -> usize {
        self.rng.gen_range(0..self.writes.len())
    }

    /// A new session index; its values are `index * 1000 + write count`.
    fn new_session(&mut self) -> i64 {
        self.writes.push(0);
        (self.writes.len() as i64 - 1) * 1000
    }

    fn op(&mut self, kind: Kind) -> Op {
        match kind {
            Kind::Create => Op::Create(self.new_session()),
            Kind::Load => Op::Load(self.session()),
            Kind::LoadUnknown => Op::LoadUnknown,
            Kind::Save => {
                let i = self.session();
                self.writes[i] += 1;
                Op::Save(i, i as i64 * 1000 + self.writes[i])
            }
            Kind::Delete => Op::Delete(self.session()),
            Kind::Cycle => {
                let i = self.session();
                self.new_session();
                Op::Cycle(i)
            }
            Kind::Tick => {
                let room = MAX_ADVANCE_MINUTES - 1 - self.advanced_minutes;
                let minutes = self.rng.gen_range(1..=room.min(10));
                self.advanced_minutes += minutes;
                Op::Tick(minutes)
            }
            Kind::Flush => Op::Flush,
            Kind::Evict => Op::Evict(self.session()),
            Kind::Corrupt => Op::Corrupt(self.session(), self.rng.gen()),
            Kind::WrongType => Op::WrongType(self.session()),
            Kind::Plant => Op::Plant(self.session(), self.session()),
            Kind::RedisDown => {
                self.redis = Redis::Down;
                Op::RedisDown
            }
            Kind::RedisUp => {
                self.redis = Redis::Up;
                Op::RedisUp
            }
            Kind::RedisHang => {
                self.redis = Redis::Hung;
                Op::RedisHang
            }
            Kind::RedisResume => {
                self.redis = Redis::Up;
                Op::RedisResume
            }
            Kind::PgDown => {
                self.pg_up = false;
                Op::PgDown
            }
            Kind::PgUp => {
                self.pg_up = true;
                Op::PgUp
            }
        }
    }
}

/// The operations of one sequence: 30 to 40, all from `seed`.
fn generate(seed: u64, mix: &[(Kind, u32)]) -> Vec<Op> {
    let mut generator = Generator {
        rng: StdRng::seed_from_u64(seed),
        writes: Vec::new(),
        redis: Redis::Up,
        pg_up: true,
        advanced_minutes: 0,
    };
    let len = generator.rng.gen_range(30..=40);
    (0..len)
        .map(|_| {
            let kind = generator.pick(mix);
            generator.op(kind)
        })
        .collect()
}

// --- the system under test -------------------------------------------------------------------

/// A clock that moves only when the test says so.
#[derive(Debug, Clone)]
struct ManualClock(Arc<StdMutex<OffsetDateTime>>);

impl ManualClock {
    fn new() -> ManualClock {
        ManualClock(Arc::new(StdMutex::new(OffsetDateTime::now_utc())))
    }

    fn advance(&self, minutes: u32) {
        *self.0.lock().expect("clock lock") += time::Duration::minutes(minutes.into());
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().expect("clock lock")
    }
}

/// The servers and the store, shared by the sequences of one test.
struct Rig {
    cluster: PostgresCluster,
    redis: RedisServer,
    store: TieredStore,
    /// Reads the durable tier around the store.
    checker: PostgresDurable,
    clock: ManualClock,
    redis_state: Redis,
    pg_up: bool,
    /// How many loads and writes succeeded and failed, per server state, for the summary.
    outcomes: BTreeMap<String, usize>,
}

impl Rig {
    async fn new() -> Rig {
        let cluster = PostgresCluster::init().await;
        let url = cluster.create_database().await;
        let redis = RedisServer::start().await;
        let clock = ManualClock::new();
        let store = TieredStore::builder(
            RedisCache::connect(&redis.url())
                .await
                .expect("a valid Redis URL"),
        )
        .with_durable(durable(&url).await)
        .with_clock(clock.clone())
        .with_idle_timeout(IDLE_TIMEOUT)
        .with_touch_interval(TOUCH_INTERVAL)
        .build()
        .expect("store");
        Rig {
            cluster,
            redis,
            store,
            checker: durable(&url).await,
            clock,
            redis_state: Redis::Up,
            pg_up: true,
            outcomes: BTreeMap::new(),
        }
    }

    /// Whether Redis answers (it may still be bypassed by the store).
    fn redis_up(&self) -> bool {
        self.redis_state == Redis::Up
    }

    /// The servers' state, for the log and the summary.
    fn state(&self) -> String {
        let redis = format!("{:?}", self.redis_state).to_lowercase();
        let pg = if self.pg_up { "up" } else { "down" };
        format!("redis {redis}, pg {pg}")
    }

    /// Counts one outcome of `what` in the current server state.
    fn count(&mut self, what: &str, ok: bool) {
        let result = if ok { "ok" } else { "err" };
        let key = format!("{what} {result} [{}]", self.state());
        *self.outcomes.entry(key).or_default() += 1;
    }

    /// Brings both servers back and waits until the store serves from Redis again; returns
    /// whether it did within [`BACK_ON_CACHE`].
    async fn restore(&mut self) -> bool {
        match self.redis_state {
            Redis::Up => {}
            Redis::Hung => self.redis.cont_process(),
            Redis::Down => self.redis.restart().await,
        }
        self.redis_state = Redis::Up;
        if !self.pg_up {
            self.cluster.start().await;
            self.pg_up = true;
        }
        // A request makes the store notice a restarted Redis (a lost connection opens the
        // circuit); the probe then closes it.
        let store = &self.store;
        poll_until(BACK_ON_CACHE, Duration::from_millis(20), || async {
            let _ = store.load(&Id::default()).await;
            !store.cache_bypassed()
        })
        .await
    }

    /// The `n` the durable tier holds for a session, read around the store.
    async fn durable_n(&self, id: &Id) -> Option<i64> {
        let row = self
            .checker
            .load(&StorageKey::from_id(id), self.clock.now())
            .await
            .expect("durable load")?;
        envelope::decode_data(&row.data)?.get("n")?.as_i64()
    }
}

async fn durable(url: &str) -> PostgresDurable {
    let durable = PostgresDurable::connect(url).await.expect("Postgres");
    durable.migrate().await.expect("migrate");
    durable
}

fn redis_key(id: &Id) -> String {
    format!(
        "{}{}",
        <RedisCache>::DEFAULT_KEY_PREFIX,
        StorageKey::from_id(id).to_hex()
    )
}

// --- running a sequence against the model ----------------------------------------------------

/// A session of the sequence and the values a load of it may return (`None`: absent).
#[derive(Debug)]
struct Session {
    id: Id,
    accept: BTreeSet<Option<i64>>,
}

impl Session {
    fn new(id: Id, accept: impl IntoIterator<Item = Option<i64>>) -> Session {
        Session {
            id,
            accept: accept.into_iter().collect(),
        }
    }
}

/// One sequence being executed: the model, and a log for the failure message.
struct Run<'a> {
    rig: &'a mut Rig,
    test: &'static str,
    seed: u64,
    ops: &'a [Op],
    sessions: Vec<Session>,
    log: String,
}

impl Run<'_> {
    #[track_caller]
    fn fail(&self, message: impl Display) -> ! {
        let ops: Vec<String> = self.ops.iter().map(|op| format!("{op:?}")).collect();
        panic!(
            "{} seed {}: {message}\n\
             rerun: MODEL_SEED={} cargo test -p tiered-sessions-tests --test model {} -- --nocapture\n\
             ops: [{}]\nexecuted:\n{}",
            self.test,
            self.seed,
            self.seed,
            self.test,
            ops.join(", "),
            self.log
        );
    }

    fn note(&mut self, text: impl Display) {
        let _ = write!(self.log, " {text}");
    }

    async fn execute(&mut self) {
        for (step, op) in self.ops.iter().enumerate() {
            let _ = write!(self.log, "{step:>3}. {op:?} [{}]:", self.rig.state());
            let started = Instant::now();
            self.step(*op).await;
            let _ = writeln!(self.log, " ({} ms)", started.elapsed().as_millis());
        }
        if !self.rig.restore().await {
            self.fail(format_args!(
                "the store did not return to Redis within {BACK_ON_CACHE:?} of both servers being up"
            ));
        }
        self.log.push_str("end: both up, back on Redis\n");
        self.check_all().await;
    }

    async fn step(&mut self, op: Op) {
        match op {
            Op::Create(n) => self.create(n).await,
            Op::Load(i) => {
                self.load(Some(i), self.sessions[i].id).await;
            }
            Op::LoadUnknown => {
                self.load(None, Id::default()).await;
            }
            Op::Save(i, n) => self.save(i, n).await,
            Op::Delete(i) => {
                self.delete(i).await;
            }
            Op::Cycle(i) => self.cycle(i).await,
            Op::Tick(minutes) => self.rig.clock.advance(minutes),
            Op::Flush => self.rig.redis.flushall().await,
            Op::Evict(i) => self.evict(i).await,
            Op::Corrupt(i, bit) => self.corrupt(i, bit).await,
            Op::WrongType(i) => self.wrong_type(i).await,
            Op::Plant(i, from) => self.plant(i, from).await,
            Op::RedisDown => {
                self.rig.redis.kill();
                self.rig.redis_state = Redis::Down;
            }
            Op::RedisUp => {
                self.rig.redis.restart().await;
                self.rig.redis_state = Redis::Up;
            }
            Op::RedisHang => {
                self.rig.redis.stop_process();
                self.rig.redis_state = Redis::Hung;
            }
            Op::RedisResume => {
                self.rig.redis.cont_process();
                self.rig.redis_state = Redis::Up;
            }
            Op::PgDown => {
                self.rig.cluster.stop_fast().await;
                self.rig.pg_up = false;
            }
            Op::PgUp => {
                self.rig.cluster.start().await;
                self.rig.pg_up = true;
            }
        }
    }

    /// Loads `id` (session `index`, or an id never created) and checks the answer against
    /// the model; a value it accepts becomes the only acceptable one. Returns the record
    /// when there was one.
    async fn load(&mut self, index: Option<usize>, id: Id) -> Option<Record> {
        let accept = match index {
            Some(i) => self.sessions[i].accept.clone(),
            None => BTreeSet::from([None]),
        };
        let record = match self.rig.store.load(&id).await {
            Ok(record) => record,
            Err(e) => {
                self.rig.count("load", false);
                self.note(format_args!("load Err({e})"));
                if self.rig.pg_up {
                    self.fail(format_args!("load failed with Postgres up: {e}"));
                }
                return None;
            }
        };
        let value = record.as_ref().map(|record| self.n_of(&id, record));
        self.rig.count("load", true);
        if accept.len() > 1 {
            self.rig.count("load after an unacknowledged write", true);
        }
        self.note(format_args!("load {value:?}"));
        if !self.rig.pg_up && !self.rig.redis_up() {
            self.fail("load answered with neither server up");
        }
        if !accept.contains(&value) {
            self.fail(format_args!(
                "wrong value: load returned {value:?}, the model accepts {accept:?}"
            ));
        }
        if let Some(i) = index {
            self.sessions[i].accept = BTreeSet::from([value]);
        }
        record
    }

    /// The `n` of a loaded record, failing the run if it is not a session of `id` in the
    /// shape the test writes.
    fn n_of(&self, id: &Id, record: &Record) -> i64 {
        if record.id != *id {
            self.fail(format_args!(
                "load of {id} returned a record of {}",
                record.id
            ));
        }
        if let Some(key) = record.data.keys().find(|k| *k != "n" && *k != REVISION_KEY) {
            self.fail(format_args!("loaded data has a foreign key {key:?}"));
        }
        match record.data.get("n").and_then(serde_json::Value::as_i64) {
            Some(n) => n,
            None => self.fail(format_args!("loaded data has no n: {:?}", record.data)),
        }
    }

    /// Checks a write's result: acknowledged exactly when Postgres is up. Returns whether
    /// it succeeded.
    fn write_ok<E: Display>(&mut self, what: &str, result: &Result<(), E>) -> bool {
        match result {
            Ok(()) => {
                self.rig.count(what, true);
                self.note(format_args!("{what} Ok"));
                if !self.rig.pg_up {
                    self.fail(format_args!("{what} acknowledged with Postgres down"));
                }
                true
            }
            Err(e) => {
                self.rig.count(what, false);
                self.note(format_args!("{what} Err({e})"));
                if self.rig.pg_up {
                    self.fail(format_args!("{what} failed with Postgres up: {e}"));
                }
                false
            }
        }
    }

    async fn create(&mut self, n: i64) {
        let mut record = Record {
            id: Id::default(),
            data: [("n".to_owned(), n.into())].into_iter().collect(),
            expiry_date: self.rig.clock.now() + IDLE_TIMEOUT,
        };
        self.create_record(&mut record, n).await;
    }

    /// Creates `record` (whose `n` is `n`) as a new session of the sequence. A failed create
    /// may have left the session behind: either value is acceptable.
    async fn create_record(&mut self, record: &mut Record, n: i64) {
        let result = self.rig.store.create(record).await;
        let accept = if self.write_ok("create", &result) {
            vec![Some(n)]
        } else {
            vec![None, Some(n)]
        };
        self.sessions.push(Session::new(record.id, accept));
    }

    /// What a request that changes the session does: load, change, save.
    async fn save(&mut self, i: usize, n: i64) {
        let Some(mut record) = self.load(Some(i), self.sessions[i].id).await else {
            return;
        };
        record.data.insert("n".to_owned(), n.into());
        let result = self.rig.store.save(&record).await;
        if self.write_ok("save", &result) {
            self.sessions[i].accept = BTreeSet::from([Some(n)]);
        } else {
            self.sessions[i].accept.insert(Some(n));
        }
    }

    async fn delete(&mut self, i: usize) -> bool {
        let result = self.rig.store.delete(&self.sessions[i].id).await;
        let deleted = self.write_ok("delete", &result);
        if deleted {
            self.sessions[i].accept = BTreeSet::from([None]);
        } else {
            self.sessions[i].accept.insert(None);
        }
        deleted
    }

    /// `Session::cycle_id` on a loaded session, then the save that follows it: the old id is
    /// deleted, the data created again under a new one. The new session index exists
    /// whatever happens; it stays an id never created when the cycle stops early.
    async fn cycle(&mut self, i: usize) {
        let record = self.load(Some(i), self.sessions[i].id).await;
        let Some(mut record) = record else {
            self.sessions.push(Session::new(Id::default(), [None]));
            return;
        };
        if !self.delete(i).await {
            self.sessions.push(Session::new(Id::default(), [None]));
            return;
        }
        let n = self.n_of(&record.id, &record);
        self.create_record(&mut record, n).await;
    }

    async fn evict(&mut self, i: usize) {
        let key = redis_key(&self.sessions[i].id);
        let removed: i64 = self.rig.redis.admin().del(key).await.expect("DEL");
        self.note(format_args!("removed {removed}"));
    }

    // The cache faults run as Lua scripts: atomic, so a background refill or slide of the
    // store cannot land between their read and their write.

    async fn corrupt(&mut self, i: usize, bit: u16) {
        const FLIP: &str = "\
            if redis.call('TYPE', KEYS[1]).ok ~= 'string' then \
                redis.call('SET', KEYS[1], 'not a session') return {-1, 0} end \
            local v = redis.call('GET', KEYS[1]) \
            local at = tonumber(ARGV[1]) % #v \
            local flipped = string.char(bit.bxor(string.byte(v, at + 1), tonumber(ARGV[2]))) \
            redis.call('SET', KEYS[1], string.sub(v, 1, at) .. flipped .. string.sub(v, at + 2), 'KEEPTTL') \
            return {at, #v}";
        let mask = 1 << (bit % 8);
        let key = redis_key(&self.sessions[i].id);
        match self.script(FLIP, vec![key], vec![bit.into(), mask]).await[..] {
            [-1, _] => self.note("planted garbage"),
            [at, len] => self.note(format_args!("flipped bit {mask:#x} of byte {at} of {len}")),
            ref other => self.fail(format_args!("unexpected script reply {other:?}")),
        }
    }

    async fn wrong_type(&mut self, i: usize) {
        const HASH: &str = "redis.call('DEL', KEYS[1]) \
            redis.call('HSET', KEYS[1], 'field', 'value') return {}";
        self.script(HASH, vec![redis_key(&self.sessions[i].id)], Vec::new())
            .await;
    }

    async fn plant(&mut self, i: usize, from: usize) {
        const COPY: &str = "\
            if redis.call('TYPE', KEYS[2]).ok ~= 'string' then return {-1} end \
            local v = redis.call('GET', KEYS[2]) \
            redis.call('SET', KEYS[1], v, 'KEEPTTL') return {#v}";
        let keys = vec![
            redis_key(&self.sessions[i].id),
            redis_key(&self.sessions[from].id),
        ];
        match self.script(COPY, keys, Vec::new()).await[..] {
            [-1] => self.note("nothing to copy"),
            [len] => self.note(format_args!("copied {len} bytes")),
            ref other => self.fail(format_args!("unexpected script reply {other:?}")),
        }
    }

    async fn script(&self, script: &'static str, keys: Vec<String>, args: Vec<i64>) -> Vec<i64> {
        self.rig
            .redis
            .admin()
            .eval(script, keys, args)
            .await
            .unwrap_or_else(|e| self.fail(format_args!("fault script failed: {e}")))
    }

    /// With both servers up and the store back on Redis: every session loads as the model
    /// says, and the durable tier holds the same.
    async fn check_all(&mut self) {
        for i in 0..self.sessions.len() {
            let _ = write!(self.log, "check {i}:");
            let id = self.sessions[i].id;
            self.load(Some(i), id).await;
            let expected = self.sessions[i].accept.first().copied().flatten();
            let durable = self.rig.durable_n(&id).await;
            if durable != expected {
                self.fail(format_args!(
                    "session {i}: the store serves {expected:?}, the durable tier holds {durable:?}"
                ));
            }
            self.log.push('\n');
        }
    }
}

// --- the tests -------------------------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The seeds to run: `MODEL_SEED` alone, else `0..MODEL_CASES` (default `cases`).
fn seeds(cases: u64) -> Vec<u64> {
    match env_u64("MODEL_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("MODEL_CASES").unwrap_or(cases)).collect(),
    }
}

/// Runs the sequences of `seeds(cases)` drawn from `mix` on one rig, then prints what ran.
async fn run_model(test: &'static str, mix: &[(Kind, u32)], cases: u64) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let print_logs = std::env::var_os("MODEL_LOG").is_some();
    let mut rig = Rig::new().await;
    let mut counts = BTreeMap::<String, usize>::new();
    let seeds = seeds(cases);
    for &seed in &seeds {
        let ops = generate(seed, mix);
        for op in &ops {
            *counts.entry(op.name()).or_default() += 1;
        }
        let mut run = Run {
            rig: &mut rig,
            test,
            seed,
            ops: &ops,
            sessions: Vec::new(),
            log: String::new(),
        };
        run.execute().await;
        if print_logs {
            println!("{test} seed {seed}:\n{}", run.log);
        }
    }
    let total: usize = counts.values().sum();
    println!(
        "{test}: {} sequences, {total} operations in {:.1?}\nmix: {counts:?}\noutcomes: {:#?}",
        seeds.len(),
        started.elapsed(),
        rig.outcomes
    );
}

/// Session operations with Redis flushed, keys evicted, corrupted, replaced or copied, and
/// Redis killed, restarted and hung; Postgres stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_faults_match_the_model() {
    run_model("cache_faults_match_the_model", CACHE_MIX, 40).await;
}

/// The same with Postgres stopped and started as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_and_postgres_faults_match_the_model() {
    let mix: Vec<(Kind, u32)> = CACHE_MIX.iter().chain(POSTGRES_FAULTS).copied().collect();
    run_model("cache_and_postgres_faults_match_the_model", &mix, 15).await;
}
