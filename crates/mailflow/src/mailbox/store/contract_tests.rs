//! The contract of [`MailboxStore`], written once and run against every backend.
//!
//! A backend's test module implements [`Backend`] (how to get an empty database and
//! open stores of it, plus the two hooks the trait does not offer) and invokes
//! [`contract_tests!`] with it. That defines one `#[tokio::test]` per contract test
//! in that module, so a failure names its backend (`sqlite::tests::…`,
//! `postgres::tests::…`). A contract test added here goes into the macro's list, and
//! then runs against every backend; one left out is dead code, which the build flags.
//!
//! The helpers (`item`, `inbox`, `deliver`, `ids`, the users) are shared with the
//! backends' own tests.

use std::collections::BTreeSet;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;

use super::{Committed, Folder, FolderCount, MailboxStore, NewItem, StoreError, StoredItem};

pub type TestResult = Result<(), Box<dyn Error>>;

pub const USER1: &str = "user1@contoso.test";
pub const USER2: &str = "user2@contoso.test";

/// What the contract tests need of a backend beyond [`MailboxStore`].
pub trait Backend: Sized {
    type Store: MailboxStore + 'static;

    /// A new, empty mailbox database of its own; `None`, after saying why, when this
    /// backend cannot be tested here (the test then passes).
    fn new() -> Result<Option<Self>, Box<dyn Error>>;

    /// Opens a store of this database. Every call opens a new store, as a restarted
    /// server would.
    async fn open(&self) -> Result<Self::Store, StoreError>;

    /// Transactions the store has committed so far.
    fn transactions(store: &Self::Store) -> u64;

    /// While set, every transaction of the store fails after its writes, before
    /// COMMIT, as with a failing disk or database.
    fn fail_commits(store: &Self::Store, fail: bool);
}

/// Defines, in the invoking module, one `#[tokio::test]` per contract test below,
/// run against the [`Backend`] given.
macro_rules! contract_tests {
    ($backend:ty) => {
        $crate::mailbox::store::contract_tests::contract_tests!(@tests $backend;
            commit_then_list_and_content_round_trip_exact_bytes,
            duplicates_are_stored_once_across_calls_and_within_one_call,
            counts_report_items_and_bytes_per_mailbox_and_folder,
            outbox_is_taken_across_mailboxes_and_moved_to_sent_items,
            committed_items_are_seen_by_a_new_store_of_the_same_database;
            multi_thread:
            concurrent_commits_share_transactions_and_are_each_stored_once,
            failed_batch_answers_every_caller_and_stores_nothing
        );
    };
    (@tests $backend:ty; $($test:ident),+; multi_thread: $($multi_thread_test:ident),+) => {
        $(
            #[tokio::test]
            async fn $test() -> $crate::mailbox::store::contract_tests::TestResult {
                $crate::mailbox::store::contract_tests::run::<$backend, _>(
                    $crate::mailbox::store::contract_tests::$test,
                )
                .await
            }
        )+
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $multi_thread_test() -> $crate::mailbox::store::contract_tests::TestResult {
                $crate::mailbox::store::contract_tests::run::<$backend, _>(
                    $crate::mailbox::store::contract_tests::$multi_thread_test,
                )
                .await
            }
        )+
    };
}
pub(crate) use contract_tests;

/// Runs one contract test against a new database of `B`, unless `B` cannot be tested.
pub async fn run<B, F>(test: F) -> TestResult
where
    B: Backend,
    F: AsyncFnOnce(&B) -> TestResult,
{
    match B::new()? {
        Some(backend) => test(&backend).await,
        None => Ok(()),
    }
}

pub fn item(mailbox: &str, folder: Folder, network_message_id: &str, content: &[u8]) -> NewItem {
    NewItem {
        mailbox: mailbox.to_owned(),
        folder,
        network_message_id: network_message_id.to_owned(),
        internet_message_id: format!("<{network_message_id}@contoso.test>"),
        sender: "sender@fabrikam.test".to_owned(),
        subject: format!("subject {network_message_id}"),
        content: Arc::from(content),
    }
}

/// A delivery to user1's Inbox, the common case.
pub fn inbox(network_message_id: &str, content: &[u8]) -> NewItem {
    item(USER1, Folder::Inbox, network_message_id, content)
}

/// Commits one item that must be new and returns its id.
pub async fn deliver<S>(store: &S, item: NewItem) -> Result<i64, StoreError>
where
    S: MailboxStore + ?Sized,
{
    match store.commit(vec![item]).await?[..] {
        [Committed::New(id)] => Ok(id),
        ref other => panic!("expected one new item, got {other:?}"),
    }
}

pub fn ids(items: &[StoredItem]) -> Vec<i64> {
    items.iter().map(|i| i.id).collect()
}

pub async fn commit_then_list_and_content_round_trip_exact_bytes<B: Backend>(
    backend: &B,
) -> TestResult {
    let store = backend.open().await?;
    // CRLF, a bare LF, NUL, invalid UTF-8 and trailing blanks: stored as given.
    let bytes = b"Subject: hi\r\n\r\nbody\nline \x00\xff\xfe  \r\n.\r\n";
    let id = deliver(
        &store,
        item("User1@Contoso.test", Folder::Inbox, "nm-1", bytes),
    )
    .await?;

    let listed = store.list("USER1@contoso.test", Folder::Inbox).await?;
    assert_eq!(ids(&listed), [id]);
    let stored = &listed[0];
    assert_eq!(stored.mailbox, USER1);
    assert_eq!(stored.folder, Folder::Inbox);
    assert_eq!(stored.network_message_id, "nm-1");
    assert_eq!(stored.internet_message_id, "<nm-1@contoso.test>");
    assert_eq!(stored.sender, "sender@fabrikam.test");
    assert_eq!(stored.subject, "subject nm-1");
    assert_eq!(stored.size, bytes.len() as u64);
    // One form whatever the backend: UTC, milliseconds and Z.
    assert_eq!(stored.received.len(), "2024-01-01T00:00:00.000Z".len());
    assert!(stored.received.ends_with('Z'), "{}", stored.received);
    let received = chrono::DateTime::parse_from_rfc3339(&stored.received)?;
    let age = chrono::Utc::now().signed_duration_since(received);
    assert!(
        age.num_minutes().abs() < 5,
        "received {received}, {age} ago"
    );

    assert_eq!(store.content(id).await?, bytes);
    assert_eq!(
        store.content(id + 1).await,
        Err(StoreError::NotFound(id + 1))
    );
    assert!(store.list(USER1, Folder::Drafts).await?.is_empty());
    Ok(())
}

pub async fn duplicates_are_stored_once_across_calls_and_within_one_call<B: Backend>(
    backend: &B,
) -> TestResult {
    let store = backend.open().await?;
    let a = inbox("nm-a", b"first copy");
    let first = deliver(&store, a.clone()).await?;
    // A retried delivery of the same message to the same recipient.
    let retried = store.commit(vec![a.clone()]).await?;
    assert_eq!(retried, [Committed::Duplicate(first)]);

    let b = inbox("nm-b", b"b");
    let twice = store.commit(vec![b.clone(), b]).await?;
    let [Committed::New(b_id), Committed::Duplicate(dup)] = twice[..] else {
        panic!("expected New then Duplicate, got {twice:?}");
    };
    assert_eq!(dup, b_id);

    // The same message in another folder or for another mailbox is not a duplicate;
    // the same mailbox written in capitals is.
    let sent = NewItem {
        folder: Folder::SentItems,
        ..a.clone()
    };
    let user2 = NewItem {
        mailbox: USER2.to_owned(),
        ..a.clone()
    };
    let shouted = NewItem {
        mailbox: USER1.to_uppercase(),
        ..a
    };
    let elsewhere = store.commit(vec![sent, user2, shouted]).await?;
    assert!(
        matches!(
            elsewhere[..],
            [Committed::New(_), Committed::New(_), Committed::Duplicate(id)] if id == first
        ),
        "{elsewhere:?}"
    );

    assert_eq!(ids(&store.list(USER1, Folder::Inbox).await?), [first, b_id]);
    assert_eq!(store.content(first).await?, b"first copy");
    Ok(())
}

pub async fn concurrent_commits_share_transactions_and_are_each_stored_once<B: Backend>(
    backend: &B,
) -> TestResult {
    const DELIVERIES: usize = 200;
    let store = Arc::new(backend.open().await?);
    let start = Arc::new(Barrier::new(DELIVERIES));
    let mut tasks = Vec::new();
    for n in 0..DELIVERIES {
        let (store, start) = (Arc::clone(&store), Arc::clone(&start));
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let body = format!("message {n}");
            deliver(&*store, inbox(&format!("nm-{n}"), body.as_bytes())).await
        }));
    }
    let mut handed_out = BTreeSet::new();
    for task in tasks {
        let id = task.await??;
        assert!(handed_out.insert(id), "id {id} handed out twice");
    }

    let listed = store.list(USER1, Folder::Inbox).await?;
    assert_eq!(listed.len(), DELIVERIES);
    assert_eq!(
        ids(&listed).into_iter().collect::<BTreeSet<_>>(),
        handed_out
    );
    let names: BTreeSet<String> = listed
        .iter()
        .map(|i| i.network_message_id.clone())
        .collect();
    let expected: BTreeSet<String> = (0..DELIVERIES).map(|n| format!("nm-{n}")).collect();
    assert_eq!(names, expected);
    for stored in &listed {
        let n = stored.network_message_id.trim_start_matches("nm-");
        let content = store.content(stored.id).await?;
        assert_eq!(content, format!("message {n}").as_bytes());
    }

    let transactions = B::transactions(&store);
    assert!(
        (1..DELIVERIES as u64).contains(&transactions),
        "{DELIVERIES} commits took {transactions} transactions: the writer did not group them"
    );
    Ok(())
}

pub async fn counts_report_items_and_bytes_per_mailbox_and_folder<B: Backend>(
    backend: &B,
) -> TestResult {
    let store = backend.open().await?;
    assert!(store.counts().await?.is_empty());
    store
        .commit(vec![
            inbox("nm-1", b"12345"),
            inbox("nm-2", b"123"),
            inbox("nm-2", b"123"),
            item(USER1, Folder::SentItems, "nm-3", b"1"),
            item(USER2, Folder::Inbox, "nm-1", b"12345"),
            // Counted under the lowercase address, in the order of the lowercase
            // address: "zed" after "user2".
            item("Zed@contoso.test", Folder::Drafts, "nm-4", b"12"),
        ])
        .await?;
    let count = |mailbox: &str, folder, items, bytes| FolderCount {
        mailbox: mailbox.to_owned(),
        folder,
        items,
        bytes,
    };
    let expected = [
        count(USER1, Folder::Inbox, 2, 8),
        count(USER1, Folder::SentItems, 1, 1),
        count(USER2, Folder::Inbox, 1, 5),
        count("zed@contoso.test", Folder::Drafts, 1, 2),
    ];
    assert_eq!(store.counts().await?, expected);
    Ok(())
}

pub async fn outbox_is_taken_across_mailboxes_and_moved_to_sent_items<B: Backend>(
    backend: &B,
) -> TestResult {
    let store = backend.open().await?;
    let one = deliver(&store, item(USER1, Folder::Outbox, "nm-1", b"one")).await?;
    deliver(&store, inbox("nm-2", b"two")).await?;
    let three = deliver(&store, item(USER2, Folder::Outbox, "nm-3", b"three")).await?;
    let four = deliver(&store, item(USER2, Folder::Outbox, "nm-4", b"four")).await?;
    deliver(&store, item(USER2, Folder::SentItems, "nm-4", b"four")).await?;

    assert_eq!(ids(&store.take_outbox(10).await?), [one, three, four]);
    let first = store.take_outbox(1).await?;
    assert_eq!(ids(&first), [one]);
    assert_eq!(first[0].mailbox, USER1);

    store.move_item(one, Folder::SentItems).await?;
    assert_eq!(ids(&store.list(USER1, Folder::SentItems).await?), [one]);
    assert_eq!(store.content(one).await?, b"one");
    // Moving to the folder it is in changes nothing.
    store.move_item(one, Folder::SentItems).await?;
    assert_eq!(ids(&store.list(USER1, Folder::SentItems).await?), [one]);

    // Sent Items already holds nm-4: the Outbox copy is absorbed, not left behind.
    store.move_item(four, Folder::SentItems).await?;
    assert_eq!(store.list(USER2, Folder::SentItems).await?.len(), 1);
    assert_eq!(store.content(four).await, Err(StoreError::NotFound(four)));

    assert_eq!(ids(&store.take_outbox(10).await?), [three]);
    let gone = store.move_item(four, Folder::SentItems).await;
    assert_eq!(gone, Err(StoreError::NotFound(four)));
    Ok(())
}

/// What a restarted server sees.
pub async fn committed_items_are_seen_by_a_new_store_of_the_same_database<B: Backend>(
    backend: &B,
) -> TestResult {
    let id = {
        let store = backend.open().await?;
        deliver(&store, inbox("nm-1", b"kept\r\n")).await?
    };
    let store = backend.open().await?;
    assert_eq!(ids(&store.list(USER1, Folder::Inbox).await?), [id]);
    assert_eq!(store.content(id).await?, b"kept\r\n");
    // Duplicate detection remembers deliveries made before the restart.
    let again = store.commit(vec![inbox("nm-1", b"kept\r\n")]).await?;
    assert_eq!(again, [Committed::Duplicate(id)]);
    Ok(())
}

pub async fn failed_batch_answers_every_caller_and_stores_nothing<B: Backend>(
    backend: &B,
) -> TestResult {
    let store = Arc::new(backend.open().await?);
    B::fail_commits(&store, true);
    let mut tasks = Vec::new();
    for n in 0..20 {
        let store = Arc::clone(&store);
        let item = inbox(&format!("nm-{n}"), b"x");
        tasks.push(tokio::spawn(async move { store.commit(vec![item]).await }));
    }
    for task in tasks {
        let result = tokio::time::timeout(Duration::from_secs(30), task).await??;
        assert!(matches!(result, Err(StoreError::Database(_))), "{result:?}");
    }
    assert!(store.list(USER1, Folder::Inbox).await?.is_empty());
    assert_eq!(B::transactions(&store), 0);

    // The writer survives the failure and commits once the disk or database is back.
    B::fail_commits(&store, false);
    deliver(&*store, inbox("nm-0", b"x")).await?;
    Ok(())
}
