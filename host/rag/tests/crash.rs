//! Crash safety: the real `kaito-rag` binary is killed with SIGKILL in the
//! middle of a large `/index`; on restart the environment opens, every
//! acknowledged document is there, and of the interrupted request exactly
//! the batches committed before the kill are (at least as many as the
//! progress metric reported, whole batches, never a document without its
//! chunks).

mod common;

use kaito_rag::store::{Store, StoreOptions};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Documents per committed batch of one `/index` request.
const BATCH: usize = 50;

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(data: &Path) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_kaito-rag"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--threads", "1", "--chunk-size", "48"])
            .args(["--ingest-batch-docs", &BATCH.to_string()])
            .arg("--data-dir")
            .arg(data)
            .arg("--embedding-model")
            .arg(common::model("all-minilm-l6-v2"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kaito-rag starts");
        let server = Server { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        while ureq::get(&format!("{}/health", server.url)).call().is_err() {
            assert!(Instant::now() < deadline, "kaito-rag did not become healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let mut resp = ureq::post(&format!("{}{path}", self.url)).send_json(body).map_err(|e| e.to_string())?;
        resp.body_mut().read_json().map_err(|e| e.to_string())
    }

    fn metric(&self, name: &str) -> u64 {
        let text = ureq::get(&format!("{}/metrics", self.url))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        text.lines()
            .find(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ')))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn embedded(&self) -> u64 {
        self.metric("kaito_rag_chunks_embedded_total")
    }

    fn committed(&self) -> u64 {
        self.metric("kaito_rag_documents_committed_total")
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn doc(tag: &str, i: usize) -> Value {
    let words = ["cluster", "node", "model", "vector", "index", "query", "token", "batch", "shard", "lease"];
    let text: String = (0..6)
        .map(|s| {
            let w: Vec<&str> = (0..9).map(|k| words[(i * 7 + s * 3 + k) % words.len()]).collect();
            format!("Document {tag}-{i} sentence {s} mentions {}.", w.join(" "))
        })
        .collect::<Vec<_>>()
        .join(" ");
    json!({"doc_id": format!("{tag}-{i}"), "text": text, "metadata": {"tag": tag}})
}

fn doc_ids(store: &Store, index: &str) -> Vec<String> {
    let mut ids = Vec::new();
    store
        .each_document(index, |d| {
            ids.push(d.doc_id);
            true
        })
        .unwrap();
    ids
}

#[test]
fn sigkill_during_a_large_index_loses_no_acknowledged_document() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let mut acknowledged: Vec<String> = Vec::new();
    // Kill at different points: as embedding starts, and once one and then
    // two batches of the 200-document request have committed (plus a little,
    // to land inside the next batch).
    for (round, batches) in [0u64, 1, 2].into_iter().enumerate() {
        let server = Server::start(data);
        for batch in 0..2 {
            let docs: Vec<Value> = (0..5).map(|i| doc(&format!("ack{round}x{batch}"), i)).collect();
            server.post("/index", &json!({"index_name": "kb", "documents": docs})).expect("small index request");
            acknowledged.extend((0..5).map(|i| format!("ack{round}x{batch}-{i}")));
        }
        let (before, committed_before) = (server.embedded(), server.committed());
        let big: Vec<Value> = (0..200).map(|i| doc(&format!("big{round}"), i)).collect();
        let url = server.url.clone();
        let sender = std::thread::spawn(move || {
            ureq::post(&format!("{url}/index"))
                .send_json(json!({"index_name": "kb", "documents": big}))
                .is_ok_and(|r| r.status() == 200)
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        while server.embedded() <= before && Instant::now() < deadline && !sender.is_finished() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let target = committed_before + batches * BATCH as u64;
        while server.committed() < target && Instant::now() < deadline && !sender.is_finished() {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(150 * batches));
        // What the service reported as committed just before the kill.
        let reported = (server.committed() - committed_before) as usize;
        server.kill9();
        let big_acknowledged = sender.join().unwrap();

        // The environment opens and is consistent.
        let store = Store::open(&data.join("lmdb"), StoreOptions::default()).expect("LMDB opens after SIGKILL");
        store.verify().expect("no half-written document");
        let ids = doc_ids(&store, "kb");
        for id in &acknowledged {
            assert!(ids.contains(id), "round {round}: acknowledged {id} lost");
        }
        // Exactly whole leading batches of the interrupted request, at least those reported.
        let present: Vec<&String> = ids.iter().filter(|id| id.starts_with(&format!("big{round}-"))).collect();
        let n = present.len();
        assert!(n.is_multiple_of(BATCH), "round {round}: {n} documents is not whole batches of {BATCH}");
        assert!(n >= reported, "round {round}: {reported} reported committed, {n} present");
        for i in 0..n {
            assert!(ids.contains(&format!("big{round}-{i}")), "round {round}: batches are committed in order");
        }
        if big_acknowledged {
            assert_eq!(n, 200, "round {round}: acknowledged request lost");
        }
        if !big_acknowledged && batches > 0 {
            assert!(n >= batches as usize * BATCH, "round {round}: killed after {batches} batches, {n} present");
        }
        eprintln!(
            "round {round}: killed after {batches} committed batches; {reported} reported committed, {n} of 200 present"
        );
        acknowledged.extend((0..n).map(|i| format!("big{round}-{i}")));
    }
    // A last restart serves what survived.
    let server = Server::start(data);
    let found = server
        .post(
            "/retrieve",
            &json!({"index_name": "kb", "query": "Document ack0x1-3 sentence 2", "max_node_count": 20, "metadata_filter": {"tag": "ack0x1"}}),
        )
        .unwrap();
    assert!(found["results"].as_array().unwrap().iter().any(|r| r["doc_id"] == "ack0x1-3"), "{found}");
    server.kill9();
}
