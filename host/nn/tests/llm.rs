//! Language models against the real SmolLM2-135M-Instruct (Q4_1 GGUF, from `models/fetch.sh`):
//! generation, context checks, cancellation, many sequences decoded together, the queue bound.
#![cfg(feature = "llamacpp")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use infergate_nn::llm::{Event, FinishReason, Generation, LlmError, Message, Prompt, Sampling};
use infergate_nn::{
    BackendKind, BackendOptions, Caller, LlmOptions, Model, ModelSpec, Models, NnError, Target,
};

fn model(concurrency: usize, queue_depth: usize) -> Arc<Model> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run models/fetch.sh",
        path.display()
    );
    let spec = ModelSpec {
        name: "smollm2".into(),
        path,
        backend: BackendKind::LlamaCpp,
        target: Target::Cpu,
        concurrency,
        queue_depth,
        timeout: Duration::from_secs(120),
        queue_timeout: Duration::from_secs(120),
        max_batch: None,
        batching: None,
        llm: LlmOptions {
            context: 512,
            threads: None,
        },
    };
    Models::load(&[spec], &BackendOptions::default())
        .unwrap_or_else(|e| panic!("{e:#}"))
        .get("smollm2")
        .expect("loaded")
}

fn caller(tenant: &str) -> Caller {
    Caller {
        tenant: Arc::from(tenant),
        weight: 1,
    }
}

fn question(text: &str) -> Prompt {
    Prompt::Chat(vec![Message {
        role: "user".into(),
        content: text.into(),
    }])
}

fn greedy(max_tokens: u32) -> Sampling {
    Sampling {
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ..Sampling::default()
    }
}

fn start(model: &Model, prompt: &Prompt, sampling: Sampling, tenant: &str) -> Generation {
    let llm = model.llm().expect("a language model");
    let tokens = llm.tokenize(prompt).expect("tokenize");
    let max = llm
        .fit(tokens.len() as u32, sampling.max_tokens)
        .expect("fits");
    llm.start(tokens, sampling, max, &caller(tenant), "test")
        .expect("start")
}

/// Reads to the end: the text and how it ended.
async fn finish(generation: &Generation) -> (String, FinishReason, u32) {
    let mut text = String::new();
    loop {
        match generation.read().await.expect("no error") {
            Some(Event::Text(t)) => text.push_str(&t),
            Some(Event::Done(reason, usage)) => return (text, reason, usage.completion),
            None => panic!("the stream ended without Done"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_generation_answers_and_repeats_itself() {
    let model = model(2, 8);
    let prompt = question("What is the capital of France?");
    let a = start(&model, &prompt, greedy(24), "t");
    let (text, reason, completion) = finish(&a).await;
    println!("{text:?} {reason:?} {completion}");
    assert!(text.contains("Paris"), "{text}");
    assert!(completion >= 1 && completion <= 24);
    let b = start(&model, &prompt, greedy(24), "t");
    assert_eq!(finish(&b).await.0, text, "temperature 0 is deterministic");
    assert!(a.prompt_tokens() > 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_and_stop_strings_end_a_generation() {
    let model = model(2, 8);
    let prompt = question("Count from 1 to 20, separated by commas.");
    let g = start(&model, &prompt, greedy(5), "t");
    let (_, reason, completion) = finish(&g).await;
    assert_eq!((reason, completion), (FinishReason::Length, 5));

    let full = finish(&start(&model, &prompt, greedy(64), "t")).await.0;
    println!("{full:?}");
    assert!(full.contains('4'), "{full}");
    let mut stopping = greedy(64);
    stopping.stop = vec!["4".into()];
    let (text, reason, _) = finish(&start(&model, &prompt, stopping, "t")).await;
    assert_eq!(reason, FinishReason::Stop);
    assert!(
        !text.contains('4') && full.starts_with(&text),
        "{text:?} / {full:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_that_does_not_fit_is_refused_before_decoding() {
    let model = model(1, 8);
    let llm = model.llm().unwrap();
    let long = question(&"the quick brown fox jumps over the lazy dog ".repeat(100));
    let tokens = llm.tokenize(&long).unwrap();
    assert!(tokens.len() > 512);
    assert!(matches!(
        llm.fit(tokens.len() as u32, None),
        Err(LlmError::ContextLengthExceeded { .. })
    ));
    let short = llm.tokenize(&question("hi")).unwrap();
    assert!(matches!(
        llm.fit(short.len() as u32, Some(600)),
        Err(LlmError::ContextLengthExceeded { .. })
    ));
    assert_eq!(
        llm.fit(short.len() as u32, None).unwrap(),
        512 - short.len() as u32
    );
    assert_eq!(llm.stats().started, 0, "nothing was decoded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_generation_stops_decoding_it() {
    let model = model(2, 8);
    let llm = model.llm().unwrap();
    let g = start(&model, &question("Tell me a long story."), greedy(400), "t");
    let mut seen = 0;
    while seen < 3 {
        if let Some(Event::Text(_)) = g.read().await.unwrap() {
            seen += 1;
        }
    }
    let dropped = Instant::now();
    drop(g);
    while llm.stats().cancelled == 0 {
        assert!(dropped.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("cancelled {:?} after the drop", dropped.elapsed());
    let stats = llm.stats();
    assert_eq!(stats.active, 0);
    assert!(stats.decoded_after_cancel <= 1, "{stats:?}");
    let generated = stats.tokens.completion;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(llm.stats().tokens.completion, generated);
    assert!(generated < 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_are_decoded_together() {
    let model = model(4, 8);
    let llm = model.llm().unwrap();
    let prompts = [
        "Name a fruit.",
        "Name a color.",
        "Name an animal.",
        "Name a city.",
    ];
    let generations: Vec<Generation> = prompts
        .iter()
        .map(|p| {
            let mut s = greedy(32);
            s.stop = vec![];
            start(&model, &question(p), s, "t")
        })
        .collect();
    let mut total = 0;
    for g in &generations {
        total += finish(g).await.2;
    }
    let stats = llm.stats();
    println!("{total} tokens in {} steps", stats.steps);
    // One step decodes a token of every live sequence: far fewer steps than tokens.
    assert!(stats.steps < u64::from(total) * 3 / 4, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let model = model(1, 1);
    let llm = model.llm().unwrap();
    let prompt = question("Tell me a long story.");
    let first = start(&model, &prompt, greedy(200), "t");
    // The first holds the one sequence; wait until it is admitted, so the queue is empty.
    first.ready().await;
    let _second = start(&model, &prompt, greedy(200), "t");
    let tokens = llm.tokenize(&prompt).unwrap();
    let third = llm.start(tokens, greedy(200), 200, &caller("t"), "test");
    assert!(matches!(third, Err(NnError::QueueFull { .. })), "{third:?}");
    assert_eq!(llm.stats().rejected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_prompt_prefix_is_not_prefilled_again_for_the_same_tenant_only() {
    let model = model(1, 8);
    let llm = model.llm().unwrap();
    let prompt = question("What is the capital of France?");
    let prompt_tokens = llm.tokenize(&prompt).unwrap().len() as u64;

    let (first, ..) = finish(&start(&model, &prompt, greedy(16), "t")).await;
    assert_eq!(llm.stats().prompt_tokens_cached, 0);
    let (again, ..) = finish(&start(&model, &prompt, greedy(16), "t")).await;
    let stats = llm.stats();
    assert_eq!(
        again, first,
        "the cache changes nothing in what is generated"
    );
    // All but the last prompt token (decoded again for its logits) came from the cache.
    assert_eq!(stats.prompt_tokens_cached, prompt_tokens - 1, "{stats:?}");
    assert_eq!(
        stats.tokens.prompt,
        2 * prompt_tokens,
        "cached tokens still count"
    );

    // The next turn of the same chat reuses the first turn.
    let next_turn = Prompt::Chat(vec![
        Message {
            role: "user".into(),
            content: "What is the capital of France?".into(),
        },
        Message {
            role: "assistant".into(),
            content: first.clone(),
        },
        Message {
            role: "user".into(),
            content: "And of Italy?".into(),
        },
    ]);
    finish(&start(&model, &next_turn, greedy(8), "t")).await;
    let reused = llm.stats().prompt_tokens_cached - stats.prompt_tokens_cached;
    assert!(reused >= prompt_tokens - 2, "{reused} of {prompt_tokens}");

    // Another tenant never starts from what this one left.
    let before = llm.stats().prompt_tokens_cached;
    let (other, ..) = finish(&start(&model, &prompt, greedy(16), "u")).await;
    assert_eq!(other, first);
    assert_eq!(llm.stats().prompt_tokens_cached, before);
    finish(&start(&model, &prompt, greedy(16), "u")).await;
    assert_eq!(llm.stats().prompt_tokens_cached, before + prompt_tokens - 1);
}
