// The calendar list page: keep the token for this tab (sessionStorage, as the board does), take it
// out of the address bar, and open a calendar typed by name.
const TOKEN_KEY = 'accord.token'
const url = new URL(location.href)
const token = url.searchParams.get('token')
if (token !== null) {
  sessionStorage.setItem(TOKEN_KEY, token)
  url.searchParams.delete('token')
  history.replaceState(null, '', url.pathname + url.search + url.hash)
} else if (sessionStorage.getItem(TOKEN_KEY) && document.querySelector('form.login')) {
  // A stored token and a login form: the relay was asked without it; ask again with it.
  location.replace(`/?token=${encodeURIComponent(sessionStorage.getItem(TOKEN_KEY))}`)
}
const form = document.getElementById('open-calendar')
form?.addEventListener('submit', event => {
  event.preventDefault()
  const name = document.getElementById('calendar-name').value.trim()
  if (name) location.assign(`/board/${encodeURI(name)}`)
})
