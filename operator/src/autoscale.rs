//! Queue-depth autoscaling. `recommend` is the pure HPA policy; the loop that scrapes pods' `/metrics`, calls it
//! and patches the scale subresource is not written yet (issue 10).

pub mod recommend;
