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
            ..Default::default()
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
fn results_do_not_depend_on_the_session_threads() {
    // How each sum is cut into pieces depends on the shapes alone, never on the team (an `[in, out]`
    // matvec is always two fixed halves of its inputs), so a team of any size gives the same bits
    // (prefill through the GEMMs, decode through the matvecs, attention split by head).
    let g = common::golden("ref-gpt2");
    let model = Model::open(common::ref_model("ref-gpt2")).unwrap();
    let prompt = &g.prompts[0].input_ids;
    let run = |threads: usize| {
        let mut s = model.session();
        s.set_threads(threads);
        assert_eq!(s.threads(), threads);
        let mut out = vec![s.prefill(prompt).unwrap().to_vec()];
        for t in 0..6u32 {
            out.push(s.step(100 + t).unwrap().to_vec());
        }
        out
    };
    let one = run(1);
    for threads in [2, 3] {
        assert!(run(threads) == one, "{threads} threads differ from 1");
    }
}

#[test]
fn model_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Model>();
}
