//! The RAG API contract, endpoint by endpoint, with all-MiniLM embeddings and
//! LMDB under a temporary directory: what KAITO's clients send and read, and
//! the 4xx answers for bad input.

mod common;

use common::call;
use serde_json::{Value, json};

const DOCS: &[(&str, &str)] = &[
    ("Paris is the capital of France. The Eiffel Tower stands on the Champ de Mars.", "geo"),
    ("KAITO provisions GPU nodes and runs model inference for a Workspace resource.", "kaito"),
    ("The RAGEngine resource deploys a retrieval service with an embedding model.", "kaito"),
    ("Mount Everest is the highest mountain above sea level, in the Himalayas.", "geo"),
];

fn index_body(name: &str) -> String {
    let documents: Vec<Value> =
        DOCS.iter().map(|(t, topic)| json!({"text": t, "metadata": {"topic": topic}})).collect();
    json!({"index_name": name, "documents": documents}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_as_kaito_documents() {
    let dir = tempfile::tempdir().unwrap();
    let state = common::state(dir.path(), None);

    let (code, health) = call(&state, "GET", "/health", "").await;
    assert_eq!((code, health["status"].as_str()), (200, Some("Healthy")));
    assert_eq!(health["detail"], Value::Null);

    // POST /index: ids are sha256 of the text, as KAITO assigns them.
    let (code, indexed) = call(&state, "POST", "/index", &index_body("kb")).await;
    assert_eq!(code, 200, "{indexed}");
    let indexed = indexed.as_array().unwrap().clone();
    assert_eq!(indexed.len(), 4);
    assert_eq!(indexed[0]["doc_id"], kaito_rag::store::sha256(DOCS[0].0));
    assert_eq!(indexed[0]["metadata"]["topic"], "geo");
    // Indexing the same documents again changes nothing.
    let (code, again) = call(&state, "POST", "/index", &index_body("kb")).await;
    assert_eq!((code, again.as_array().unwrap().len()), (200, 4));
    assert_eq!(state.store.counts("kb").unwrap().map(|c| c.0), Some(4));

    let (code, names) = call(&state, "GET", "/indexes", "").await;
    assert_eq!((code, names), (200, json!(["kb"])));

    // GET documents: paging, truncation, metadata filter.
    let (code, page) = call(&state, "GET", "/indexes/kb/documents?limit=2&offset=1&max_text_length=5", "").await;
    assert_eq!(code, 200, "{page}");
    assert_eq!((page["count"].as_u64(), page["total_items"].as_u64()), (Some(2), Some(4)));
    assert_eq!(page["documents"][0]["text"].as_str().unwrap().chars().count(), 5);
    assert_eq!(page["documents"][0]["is_truncated"], true);
    let filter = "%7B%22topic%22%3A%22kaito%22%7D";
    let (_, kaito) = call(&state, "GET", &format!("/indexes/kb/documents?metadata_filter={filter}"), "").await;
    assert_eq!(kaito["total_items"], 2);
    assert!(kaito["documents"].as_array().unwrap().iter().all(|d| d["metadata"]["topic"] == "kaito"));

    // POST /retrieve: the relevant chunk first, scores split into dense and sparse.
    let q = json!({"index_name": "kb", "query": "What is the capital of France?", "max_node_count": 3});
    let (code, found) = call(&state, "POST", "/retrieve", &q.to_string()).await;
    assert_eq!(code, 200, "{found}");
    assert_eq!(found["count"], 3);
    let top = &found["results"][0];
    assert_eq!(top["doc_id"], kaito_rag::store::sha256(DOCS[0].0));
    assert!(top["dense_score"].as_f64().unwrap() > 0.4, "{top}");
    assert!(top["score"].as_f64().unwrap() >= found["results"][1]["score"].as_f64().unwrap());
    for key in ["node_id", "text", "sparse_score", "source", "metadata"] {
        assert!(top.get(key).is_some(), "result lacks {key}: {top}");
    }
    let q = json!({"index_name": "kb", "query": "GPU nodes", "max_node_count": 5, "metadata_filter": {"topic": "geo"}});
    let (_, geo) = call(&state, "POST", "/retrieve", &q.to_string()).await;
    assert_eq!(geo["count"], 2, "{geo}");
    assert!(geo["results"].as_array().unwrap().iter().all(|r| r["metadata"]["topic"] == "geo"));

    // POST /indexes/{name}/documents: updated, unchanged, not found.
    let id0 = indexed[0]["doc_id"].as_str().unwrap();
    let id1 = indexed[1]["doc_id"].as_str().unwrap();
    let upd = json!({"documents": [
        {"doc_id": id0, "text": "Berlin is the capital of Germany.", "metadata": {"topic": "geo"}},
        {"doc_id": id1, "text": DOCS[1].0, "metadata": {"topic": "kaito"}},
        {"doc_id": "nope", "text": "x"},
    ]});
    let (code, out) = call(&state, "POST", "/indexes/kb/documents", &upd.to_string()).await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(out["updated_documents"][0]["doc_id"], id0);
    assert_eq!(out["unchanged_documents"][0]["doc_id"], id1);
    assert_eq!(out["not_found_documents"][0]["doc_id"], "nope");
    let q = json!({"index_name": "kb", "query": "capital of Germany", "max_node_count": 1});
    let (_, found) = call(&state, "POST", "/retrieve", &q.to_string()).await;
    assert_eq!(found["results"][0]["text"], "Berlin is the capital of Germany.");

    // Persist to KAITO's default place, then load under another name; loading
    // over an existing index needs overwrite. Relative paths like ./dir work.
    let (code, saved) = call(&state, "POST", "/persist/kb", "").await;
    assert_eq!((code, saved["documents"].as_u64()), (200, Some(4)), "{saved}");
    assert_eq!(saved["message"], "Successfully persisted index kb to storage/kb.");
    assert!(dir.path().join("storage/kb").is_dir());
    let (code, err) = call(&state, "POST", "/load/kb", "").await;
    assert_eq!(code, 409, "{err}");
    assert!(err["detail"].as_str().unwrap().starts_with("Index 'kb' already exists."), "{err}");
    let (code, loaded) = call(&state, "POST", "/load/copy?path=storage/kb", "").await;
    assert_eq!((code, loaded["documents"].as_u64()), (200, Some(4)), "{loaded}");
    assert_eq!(loaded["message"], "Successfully loaded index copy from storage/kb.");
    let (code, _) = call(&state, "POST", "/load/kb?overwrite=true", "").await;
    assert_eq!(code, 200);
    let (code, saved) = call(&state, "POST", "/persist/kb?path=./backups/kb", "").await;
    assert_eq!((code, saved["message"].as_str()), (200, Some("Successfully persisted index kb to ./backups/kb.")));
    assert!(dir.path().join("backups/kb").is_dir());

    // Delete documents, then the index.
    let del = json!({"doc_ids": [id0, "missing"]});
    let (code, out) = call(&state, "POST", "/indexes/copy/documents/delete", &del.to_string()).await;
    assert_eq!(code, 200);
    assert_eq!((out["deleted_doc_ids"].clone(), out["not_found_doc_ids"].clone()), (json!([id0]), json!(["missing"])));
    let (code, out) = call(&state, "DELETE", "/indexes/copy", "").await;
    assert_eq!((code, out["message"].as_str()), (200, Some("Successfully deleted index copy.")));
    let (_, names) = call(&state, "GET", "/indexes", "").await;
    assert_eq!(names, json!(["kb"]));

    let (code, metrics) = call(&state, "GET", "/metrics", "").await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert_eq!(code, 200);
    assert!(metrics.contains("kaito_rag_requests_total{route=\"/retrieve\",code=\"200\"}"), "{metrics}");
    assert!(metrics.contains("kaito_rag_chunks_embedded_total"), "{metrics}");
    // KAITO's series beside ours.
    assert!(metrics.contains("rag_indexes_retrieve_requests_total{status=\"success\"} 3"), "{metrics}");
    assert!(metrics.contains("rag_load_requests_total{status=\"failure\"} 1"), "{metrics}");
    assert!(
        metrics.contains("rag_index_latency_seconds_bucket{le=\"0.005\",status=\"success\"}")
            || metrics.contains("rag_index_latency_seconds_bucket{status=\"success\",le=\"0.005\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let state = common::state(dir.path(), None);
    call(&state, "POST", "/index", &index_body("kb")).await;

    let cases: &[(&str, &str, &str, u16, &str)] = &[
        ("POST", "/index", "{\"index_name\": \"kb\"", 400, "body"),
        ("POST", "/index", "{\"index_name\": \"kb\", \"documents\": [{\"text\": 3}]}", 400, "documents[0].text"),
        ("POST", "/index", "{\"index_name\": \"kb\", \"documents\": []}", 400, "documents"),
        ("POST", "/index", "{\"index_name\": \"a/b\", \"documents\": [{\"text\": \"x\"}]}", 400, "index_name"),
        (
            "POST",
            "/index",
            "{\"index_name\": \"kb\", \"documents\": [{\"text\": \"x\", \"metadata\": {\"split_type\": \"code\", \"language\": \"cobol\"}}]}",
            400,
            "documents[0].metadata.language",
        ),
        ("GET", "/indexes/kb/documents?limit=101", "", 400, "limit"),
        ("GET", "/indexes/kb/documents?limit=ten", "", 400, "limit"),
        ("GET", "/indexes/kb/documents?metadata_filter=%5B1%5D", "", 400, "metadata_filter"),
        ("GET", "/indexes/none/documents", "", 404, ""),
        (
            "POST",
            "/retrieve",
            "{\"index_name\": \"kb\", \"query\": \"q\", \"max_node_count\": 301}",
            400,
            "max_node_count",
        ),
        ("POST", "/retrieve", "{\"index_name\": \"none\", \"query\": \"q\"}", 404, ""),
        ("POST", "/retrieve", "{\"index_name\": \"kb\"}", 400, "body"),
        ("POST", "/indexes/kb/documents", "{\"documents\": [{\"text\": \"x\"}]}", 400, "documents[0].doc_id"),
        ("POST", "/indexes/none/documents", "{\"documents\": [{\"doc_id\": \"a\", \"text\": \"x\"}]}", 404, ""),
        ("POST", "/indexes/kb/documents/delete", "{\"doc_ids\": []}", 400, "doc_ids"),
        ("DELETE", "/indexes/none", "", 404, ""),
        ("POST", "/persist/kb?path=../../etc/passwd", "", 400, "path"),
        ("POST", "/persist/none", "", 404, ""),
        ("POST", "/load/kb?path=missing", "", 404, ""),
        ("POST", "/load/kb?path=/etc", "", 400, "path"),
        ("POST", "/retrieve", "{\"index_name\": \"kb\", \"query\": \"  \"}", 400, "query"),
        ("POST", "/v1/chat/completions", "{\"messages\": []}", 503, ""),
        ("GET", "/no/such/route", "", 404, ""),
    ];
    for (method, path, body, want, field) in cases {
        let (code, err) = call(&state, method, path, body).await;
        assert_eq!(code, *want, "{method} {path} {body}: {err}");
        assert!(err["detail"].is_string() && err["error"]["message"].is_string(), "{method} {path}: {err}");
        if !field.is_empty() {
            assert_eq!(err["error"]["param"], *field, "{method} {path} {body}: {err}");
        }
    }
    // KAITO's exact messages where it has one.
    let detail = |path: &'static str, body: &'static str| {
        let state = state.clone();
        async move { call(&state, "POST", path, body).await.1["detail"].clone() }
    };
    assert_eq!(
        detail("/retrieve", "{\"index_name\": \"none\", \"query\": \"q\"}").await,
        "No such index: 'none' exists."
    );
    assert_eq!(detail("/retrieve", "{\"index_name\": \"kb\", \"query\": \"\"}").await, "Query string cannot be empty.");
    assert_eq!(detail("/load/kb?path=missing", "").await, "Path does not exist: missing");
    assert!(
        detail("/v1/chat/completions", "{}").await.as_str().unwrap().starts_with("InferenceService not configured."),
    );
    // Nothing above changed the stored documents.
    assert_eq!(state.store.counts("kb").unwrap().map(|c| c.0), Some(DOCS.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_documents_split_at_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let state = common::state(dir.path(), None);
    let body: String =
        (0..12).map(|i| format!("def handler_{i}(event):\n    return event['value_{i}'] * {i}\n\n")).collect();
    let req = json!({"index_name": "code", "documents": [{"text": body, "metadata": {"split_type": "code", "language": "python"}}]});
    let (code, out) = call(&state, "POST", "/index", &req.to_string()).await;
    assert_eq!(code, 200, "{out}");
    let (docs, chunks) = state.store.counts("code").unwrap().unwrap();
    assert_eq!(docs, 1);
    assert!(chunks > 1, "a 12-function file should not fit one 64-token chunk");
    let q = json!({"index_name": "code", "query": "handler_7", "max_node_count": 3});
    let (_, found) = call(&state, "POST", "/retrieve", &q.to_string()).await;
    // Every chunk starts at a definition, and the named function is found.
    for r in found["results"].as_array().unwrap() {
        assert!(r["text"].as_str().unwrap().starts_with("def handler_"), "{r}");
    }
    assert!(
        found["results"].as_array().unwrap().iter().any(|r| r["text"].as_str().unwrap().contains("def handler_7("))
    );
}
