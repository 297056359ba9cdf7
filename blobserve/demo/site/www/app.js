"use strict";
const clock = document.getElementById("clock");
function tick() {
  clock.textContent = "The script ran: " + new Date().toLocaleTimeString();
}
tick();
setInterval(tick, 1000);
