//! The panel's stylesheet and script: small, no build step, served from
//! the binary (a strict Content-Security-Policy allows nothing inline).

pub const CSS: &str = r#"
:root{color-scheme:light dark;--ok:#2e7d32;--bad:#c62828;--warn:#ef6c00;--muted:#777}
*{box-sizing:border-box}
body{margin:0;font:15px/1.4 system-ui,sans-serif;overflow-wrap:anywhere}
header{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:center;padding:.6rem 1rem;border-bottom:1px solid #8884}
header h1{font-size:1.2rem;margin:0}
header input{flex:1 1 12rem;min-width:0;padding:.35rem .5rem;font:inherit}
main{padding:0 1rem 2rem}
h2{font-size:1.05rem;margin:1.2rem 0 .3rem}
ul{list-style:none;margin:0;padding:0}
.ct,.stack{display:flex;flex-wrap:wrap;gap:.25rem .6rem;align-items:baseline;padding:.45rem 0;border-bottom:1px solid #8882}
.stacks{display:flex;flex-wrap:wrap;gap:.4rem;margin:.3rem 0}
.stack{border:1px solid #8884;border-radius:.4rem;padding:.2rem .5rem}
.name{font-weight:600}
.image,.counts,.stats,.update{color:var(--muted);font-size:.9em}
.pill,.state,.health{border-radius:1rem;padding:0 .5rem;font-size:.85em;border:1px solid currentColor}
.ok,.s-running,.h-healthy{color:var(--ok)}
.bad,.s-exited,.s-dead,.h-unhealthy,.problem{color:var(--bad)}
.s-restarting,.s-paused,.h-starting,.u-update_available{color:var(--warn)}
.update em{color:var(--muted);font-style:normal}
.banner{padding:.5rem .8rem;border:1px solid currentColor;border-radius:.4rem}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.3rem .4rem;border-bottom:1px solid #8882;vertical-align:top}
.buttons{display:inline-flex;gap:.3rem;flex-wrap:wrap}
.buttons form,.who{display:inline;margin:0}
button{font:inherit;padding:.15rem .6rem}
.login{display:grid;gap:.6rem;max-width:20rem;margin-top:1rem}
.login input{width:100%;font:inherit;padding:.35rem}
#flash,#stale{margin:.5rem 1rem}
[hidden]{display:none!important}
"#;

pub const JS: &str = r#"
(function () {
  var main = document.getElementById('panel');
  var filter = document.getElementById('filter');
  var stale = document.getElementById('stale');
  function apply() {
    var q = filter ? (filter.value || '').toLowerCase() : '';
    document.querySelectorAll('.ct,.stack').forEach(function (el) {
      var n = (el.getAttribute('data-name') || '').toLowerCase();
      el.hidden = q !== '' && n.indexOf(q) < 0;
    });
  }
  if (filter) {
    filter.addEventListener('input', apply);
    var q = new URLSearchParams(location.search).get('q');
    if (q) { filter.value = q; apply(); }
  }
  var path = main.getAttribute('data-live');
  if (!path) { return; }
  function poll() {
    var v = main.getAttribute('data-version');
    fetch(path + '?v=' + encodeURIComponent(v), {cache: 'no-store', credentials: 'same-origin'})
      .then(function (r) {
        stale.hidden = true;
        if (r.status === 204) { return null; }
        if (r.status === 401) { location.href = '/login'; return null; }
        if (!r.ok) { throw new Error(r.status); }
        var nv = r.headers.get('X-Panel-Version');
        return r.text().then(function (html) {
          main.innerHTML = html;
          main.setAttribute('data-version', nv);
          apply();
        });
      })
      .catch(function () { stale.hidden = false; })
      .finally(function () { setTimeout(poll, 1000); });
  }
  setTimeout(poll, 1000);
})();
"#;

/// A whale-blue square with a "d": browsers ask for an icon.
pub const ICON: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="6" fill="#1d63ed"/><text x="16" y="23" font-family="sans-serif" font-size="20" font-weight="700" fill="#fff" text-anchor="middle">d</text></svg>"##;
