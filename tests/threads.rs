//! One model, many sessions on many threads: exactly the serial results.

mod common;

use slimlm::{GenerateOptions, Model, Sampling};

#[test]
fn four_sessions_on_four_threads_match_serial() {
    let model = Model::open(common::ref_model("ref-gptneo")).unwrap();
    let g = common::golden("ref-gptneo");
    let prompts: Vec<Vec<u32>> = g
        .prompts
        .iter()
        .take(4)
        .map(|p| p.input_ids.clone())
        .collect();
    let run = |i: usize, p: &[u32]| {
        let opts = GenerateOptions {
            max_tokens: 24,
            sampling: Sampling::Random {
                temperature: 0.8,
                top_k: 40,
                top_p: 0.95,
                seed: i as u64,
            },
            stop_at_eos: false,
        };
        let mut s = model.session();
        let ids: Vec<u32> = s.generate(p, &opts).unwrap().map(Result::unwrap).collect();
        (ids, s.last_logits_slice().to_vec())
    };
    let serial: Vec<_> = prompts.iter().enumerate().map(|(i, p)| run(i, p)).collect();
    let parallel: Vec<_> = std::thread::scope(|sc| {
        let handles: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let run = &run;
                sc.spawn(move || run(i, p))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, b)) in serial.iter().zip(&parallel).enumerate() {
        assert_eq!(a.0, b.0, "session {i}: tokens");
        assert!(a.1 == b.1, "session {i}: logits differ bitwise");
    }
}

#[test]
fn model_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Model>();
}
