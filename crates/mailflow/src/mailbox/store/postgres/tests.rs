//! These tests need a PostgreSQL server: `MAILFLOW_TEST_POSTGRES` holds its URL
//! (`scripts/pg-test-server` starts a throwaway one and prints it). Without it they
//! say so and pass. Every test uses mailbox databases of its own, so they run in
//! parallel against one server.
//! Imports only the store it tests and the shared contract tests.

use super::*;
use crate::mailbox::store::contract_tests::{
    Backend, TestResult, USER1, USER2, contract_tests, deliver, ids, inbox, item,
};
use std::sync::atomic::Ordering;
use tokio::sync::Barrier;
use tokio_postgres::error::SqlState;

/// The test server's URL, or None after saying the test is skipped.
fn server() -> Option<String> {
    match std::env::var("MAILFLOW_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped: MAILFLOW_TEST_POSTGRES not set");
            None
        }
    }
}

/// A name no other test (or earlier run) uses.
fn unique(prefix: &str) -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{nanos}_{n}", std::process::id())
}

async fn store(url: &str) -> Result<PostgresStore, StoreError> {
    PostgresStore::connect(url, &unique("DB")).await
}

/// A mailbox database of its own on the test server.
struct Postgres {
    url: String,
    name: String,
}

impl Backend for Postgres {
    type Store = PostgresStore;

    fn new() -> Result<Option<Self>, Box<dyn std::error::Error>> {
        Ok(server().map(|url| Postgres {
            url,
            name: unique("DB"),
        }))
    }

    async fn open(&self) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect(&self.url, &self.name).await
    }

    fn transactions(store: &PostgresStore) -> u64 {
        store.transactions()
    }

    fn fail_commits(store: &PostgresStore, fail: bool) {
        store
            .inner
            .faults
            .fail_commits
            .store(fail, Ordering::Relaxed);
    }
}

contract_tests!(Postgres);

/// A direct connection, for what the tests check behind the store's back.
async fn admin(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = url.parse::<Config>()?.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The way the server opens it: `open_store` at startup, inside the runtime,
/// connecting on first use.
#[tokio::test]
async fn open_store_connects_on_first_use() -> TestResult {
    let Some(url) = server() else { return Ok(()) };
    let store =
        super::super::open_store(&url.into(), &unique("DB"), std::path::Path::new("unused"))?;
    assert!(store.counts().await?.is_empty());
    let committed = store.commit(vec![inbox("nm-1", b"x")]).await?;
    assert!(
        matches!(committed[..], [Committed::New(_)]),
        "{committed:?}"
    );
    assert_eq!(store.list(USER1, Folder::Inbox).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn mailbox_database_names_are_case_insensitive() -> TestResult {
    let Some(url) = server() else { return Ok(()) };
    let name = unique("db");
    let id = {
        let store = PostgresStore::connect(&url, &name).await?;
        deliver(&store, inbox("nm-1", b"kept\r\n")).await?
    };
    // As Exchange's are.
    let store = PostgresStore::connect(&url, &name.to_uppercase()).await?;
    assert_eq!(ids(&store.list(USER1, Folder::Inbox).await?), [id]);
    assert_eq!(
        store.commit(vec![inbox("nm-1", b"kept\r\n")]).await?,
        [Committed::Duplicate(id)]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_postgresql_refuses_fails_alone() -> TestResult {
    let Some(url) = server() else { return Ok(()) };
    let store = Arc::new(store(&url).await?);
    // A network message id far beyond what a btree index entry can hold (about
    // 2.7 kB), and barely compressible: PostgreSQL refuses the row.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let huge: String = (0..20_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b'!' + (seed % 90) as u8)
        })
        .collect();
    let start = Arc::new(Barrier::new(21));
    let mut tasks = Vec::new();
    for n in 0..21 {
        let (store, start) = (Arc::clone(&store), Arc::clone(&start));
        let id = if n == 10 {
            huge.clone()
        } else {
            format!("nm-{n}")
        };
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            store.commit(vec![inbox(&id, b"x")]).await
        }));
    }
    for (n, task) in tasks.into_iter().enumerate() {
        let result = task.await?;
        if n == 10 {
            assert!(matches!(result, Err(StoreError::Database(_))), "{result:?}");
        } else {
            assert!(
                matches!(result.as_deref(), Ok([Committed::New(_)])),
                "{result:?}"
            );
        }
    }
    assert_eq!(store.list(USER1, Folder::Inbox).await?.len(), 20);
    Ok(())
}

#[tokio::test]
async fn nul_in_text_is_stored_as_a_replacement_character() -> TestResult {
    let Some(url) = server() else { return Ok(()) };
    let store = store(&url).await?;
    let odd = NewItem {
        subject: "a\0b".to_owned(),
        ..inbox("nm\0x", b"\0")
    };
    let id = deliver(&store, odd.clone()).await?;
    let listed = store.list(USER1, Folder::Inbox).await?;
    assert_eq!(listed[0].subject, "a\u{fffd}b");
    assert_eq!(listed[0].network_message_id, "nm\u{fffd}x");
    assert_eq!(store.content(id).await?, b"\0");
    assert_eq!(store.commit(vec![odd]).await?, [Committed::Duplicate(id)]);
    Ok(())
}

/// Two servers of a DAG (two stores, each with its own connections) deliver the
/// same messages at once, as during a switchover: every message is stored once,
/// one of them hears New and the other Duplicate of that same item.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_delivering_the_same_messages_store_one_copy() -> TestResult {
    const MESSAGES: usize = 50;
    let Some(url) = server() else { return Ok(()) };
    let name = unique("DAG");
    let servers = [
        Arc::new(PostgresStore::connect(&url, &name).await?),
        Arc::new(PostgresStore::connect(&url, &name).await?),
    ];
    let start = Arc::new(Barrier::new(2 * MESSAGES));
    let mut tasks = Vec::new();
    for n in 0..MESSAGES {
        for server in &servers {
            let (store, start) = (Arc::clone(server), Arc::clone(&start));
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                // Two recipients per message, in either order.
                let items = if n % 2 == 0 {
                    vec![
                        inbox(&format!("nm-{n}"), b"x"),
                        item(USER2, Folder::Inbox, &format!("nm-{n}"), b"x"),
                    ]
                } else {
                    vec![
                        item(USER2, Folder::Inbox, &format!("nm-{n}"), b"x"),
                        inbox(&format!("nm-{n}"), b"x"),
                    ]
                };
                store.commit(items).await
            }));
        }
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await??);
    }
    for pair in answers.chunks(2) {
        for (&a, &b) in pair[0].iter().zip(&pair[1]) {
            match (a, b) {
                (Committed::New(x), Committed::Duplicate(y))
                | (Committed::Duplicate(y), Committed::New(x)) => assert_eq!(x, y),
                other => panic!("expected one New and one Duplicate, got {other:?}"),
            }
        }
    }
    for server in &servers {
        assert_eq!(server.list(USER1, Folder::Inbox).await?.len(), MESSAGES);
        assert_eq!(server.list(USER2, Folder::Inbox).await?.len(), MESSAGES);
    }
    Ok(())
}

#[tokio::test]
async fn two_mailbox_databases_in_one_postgresql_database_stay_apart() -> TestResult {
    let Some(url) = server() else { return Ok(()) };
    let (db1, db2) = (store(&url).await?, store(&url).await?);
    let in1 = deliver(&db1, inbox("nm-1", b"in DB01")).await?;
    // The same message for the same mailbox in the other database is no duplicate.
    let in2 = deliver(&db2, inbox("nm-1", b"in DB02")).await?;
    assert_ne!(in1, in2);
    let out1 = deliver(&db1, item(USER1, Folder::Outbox, "nm-2", b"out")).await?;

    assert_eq!(ids(&db1.list(USER1, Folder::Inbox).await?), [in1]);
    assert_eq!(ids(&db2.list(USER1, Folder::Inbox).await?), [in2]);
    assert_eq!(db2.content(in1).await, Err(StoreError::NotFound(in1)));
    assert_eq!(db1.content(in2).await, Err(StoreError::NotFound(in2)));
    assert_eq!(db1.counts().await?.len(), 2);
    assert_eq!(db2.counts().await?.len(), 1);
    assert!(db2.take_outbox(10).await?.is_empty());
    assert_eq!(
        db2.move_item(out1, Folder::SentItems).await,
        Err(StoreError::NotFound(out1))
    );
    assert_eq!(ids(&db1.take_outbox(10).await?), [out1]);
    Ok(())
}

/// Servers starting together against a PostgreSQL database without our tables
/// create them once, without tripping over each other; a schema from a newer
/// mailflow is then refused. Runs in a database of its own, created for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_starting_together_create_the_schema_once() -> TestResult {
    let Some(url) = server() else { return Ok(()) };
    let admin = admin(&url).await?;
    let fresh = unique("mailflow_schema_test").to_lowercase();
    if let Err(e) = admin
        .batch_execute(&format!("CREATE DATABASE \"{fresh}\""))
        .await
    {
        if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            eprintln!("skipped: the test role may not create databases");
            return Ok(());
        }
        return Err(e.into());
    }
    let mut config: Config = url.parse()?;
    config.dbname(&fresh);
    let outcome = async {
        let mut starts = Vec::new();
        for n in 0..8 {
            let config = config.clone();
            starts.push(tokio::spawn(async move {
                let store = PostgresStore::from_config(config, &format!("DB{n:02}"));
                store.reader().await?;
                deliver(&store, inbox("nm-1", b"x")).await
            }));
        }
        for start in starts {
            start.await??;
        }
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(connection);
        let items: i64 = client
            .query_one("SELECT count(*) FROM mailbox_items", &[])
            .await?
            .try_get(0)?;
        assert_eq!(items, 8);
        client
            .batch_execute("UPDATE mailflow_schema SET version = version + 1")
            .await?;
        match PostgresStore::from_config(config.clone(), "DB01")
            .reader()
            .await
        {
            Err(StoreError::Database(msg)) => assert!(msg.contains("newer"), "{msg}"),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a newer schema must be refused"),
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    admin
        .batch_execute(&format!("DROP DATABASE \"{fresh}\" WITH (FORCE)"))
        .await?;
    outcome
}

/// PostgreSQL restarting or failing over ends the store's sessions: the next
/// write and read open new ones rather than failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_reconnects_after_its_sessions_are_ended() -> TestResult {
    let Some(url) = server() else { return Ok(()) };
    let application = unique("mailflow_test");
    let mut config: Config = url.parse()?;
    config.application_name(&application);
    let store = PostgresStore::from_config(config, &unique("DB"));
    let first = deliver(&store, inbox("nm-1", b"x")).await?;
    assert_eq!(store.list(USER1, Folder::Inbox).await?.len(), 1);

    let admin = admin(&url).await?;
    let sessions = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&application],
        )
        .await?;
    let mut ended = 0;
    for session in &sessions {
        let pid: i32 = session.try_get(0)?;
        let row = admin
            .query_one("SELECT pg_terminate_backend($1, 10000)", &[&pid])
            .await?;
        ended += usize::from(row.try_get::<_, bool>(0)?);
    }
    assert_eq!(ended, 2, "the writer's and the reader's sessions");

    let second = deliver(&store, inbox("nm-2", b"y")).await?;
    assert_eq!(
        ids(&store.list(USER1, Folder::Inbox).await?),
        [first, second]
    );
    assert_eq!(
        store.commit(vec![inbox("nm-1", b"x")]).await?,
        [Committed::Duplicate(first)]
    );

    // The session ends in the middle of a transaction: tried again on a new one.
    store
        .inner
        .faults
        .end_session_once
        .store(true, Ordering::Relaxed);
    let third = deliver(&store, inbox("nm-3", b"z")).await?;
    assert!(!store.inner.faults.end_session_once.load(Ordering::Relaxed));
    assert_eq!(
        ids(&store.list(USER1, Folder::Inbox).await?),
        [first, second, third]
    );
    Ok(())
}

/// Every server of a DAG, whatever its mailflow version, must take the same
/// advisory locks: the keys are part of the on-database format.
#[test]
fn advisory_lock_keys_are_stable() {
    assert_eq!(
        lock_key(""),
        i64::from_ne_bytes(0xcbf2_9ce4_8422_2325_u64.to_ne_bytes())
    );
    assert_eq!(
        lock_key("a"),
        i64::from_ne_bytes(0xaf63_dc4c_8601_ec8c_u64.to_ne_bytes())
    );
    assert_ne!(
        lock_key("mailflow mailbox database db01"),
        lock_key("mailflow mailbox database db02")
    );
}
