use simnet::aba::{run_case, AbaCase, SchedulerKind};
use simnet::Behaviour;
#[test]
fn explore() {
    for sched in [SchedulerKind::ContentAware, SchedulerKind::Random] {
    for conf in [true, false] {
        for n in [4u32, 7, 10] {
            let t0 = std::time::Instant::now();
            let mut worst = 0; let mut sum = 0.0; let mut learned = 0; let mut fails = 0; let runs = 100;
            for seed in 0..runs {
                let case = AbaCase { scheduler: sched, conf_phase: conf, ..AbaCase::new(n, Behaviour::Adaptive, seed) };
                match run_case(&case) { Ok(s) => { worst = worst.max(s.rounds_worst); sum += s.rounds_mean; learned += s.coins_learned; } Err(e) => { fails += 1; if fails < 3 { println!("{e}"); } } }
            }
            println!("{sched:?} conf={conf} n={n} worst={worst} mean={:.2} learned={learned} fails={fails} {:?}", sum / runs as f64, t0.elapsed());
        }
    }}
}
