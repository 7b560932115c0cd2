//! Crash safety: the real `kaito-rag` binary is killed with SIGKILL in the
//! middle of a large `/index`; on restart the environment opens, every
//! acknowledged document is there, and the interrupted request is either
//! wholly present or wholly absent (never a document without its chunks).

mod common;

use kaito_rag::store::{Store, StoreOptions};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(data: &Path) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_kaito-rag"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--threads", "1", "--chunk-size", "48"])
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

    fn embedded(&self) -> u64 {
        let text = ureq::get(&format!("{}/metrics", self.url))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with("kaito_rag_chunks_embedded_total "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
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
    // Kill at different points: as embedding starts, later in embedding, and
    // around the commit of the 600-chunk write transaction.
    for (round, delay_ms) in [0u64, 400, 1500].into_iter().enumerate() {
        let server = Server::start(data);
        for batch in 0..2 {
            let docs: Vec<Value> = (0..5).map(|i| doc(&format!("ack{round}x{batch}"), i)).collect();
            server.post("/index", &json!({"index_name": "kb", "documents": docs})).expect("small index request");
            acknowledged.extend((0..5).map(|i| format!("ack{round}x{batch}-{i}")));
        }
        let before = server.embedded();
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
        std::thread::sleep(Duration::from_millis(delay_ms));
        server.kill9();
        let big_acknowledged = sender.join().unwrap();

        // The environment opens and is consistent.
        let store = Store::open(&data.join("lmdb"), StoreOptions::default()).expect("LMDB opens after SIGKILL");
        store.verify().expect("no half-written document");
        let ids = doc_ids(&store, "kb");
        for id in &acknowledged {
            assert!(ids.contains(id), "round {round}: acknowledged {id} lost");
        }
        let big_present = ids.iter().filter(|id| id.starts_with(&format!("big{round}-"))).count();
        assert!(big_present == 0 || big_present == 200, "round {round}: {big_present} of 200 documents of one request");
        if big_acknowledged {
            assert_eq!(big_present, 200, "round {round}: acknowledged request lost");
        }
        eprintln!("round {round}: killed {delay_ms} ms into embedding; big request present: {}", big_present == 200);
        if big_present == 200 {
            acknowledged.extend((0..200).map(|i| format!("big{round}-{i}")));
        }
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
