// A link of the form /console/#token=... (development mode prints one)
// signs in at once; the fragment never reaches the server or its logs, and
// is removed from the address bar before anything else happens.
'use strict';
(function () {
  const hash = window.location.hash;
  if (!hash.startsWith('#token=')) return;
  history.replaceState(null, '', window.location.pathname);
  const token = decodeURIComponent(hash.slice('#token='.length));
  if (!token) return;
  document.getElementById('token').value = token;
  document.getElementById('login').submit();
})();
