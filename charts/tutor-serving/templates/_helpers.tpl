{{/* Names, labels and shared pieces of the tutor-serving chart. */}}

{{- define "tutor-serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>" (or fullnameOverride), shortened so suffixes fit in 63 characters. */}}
{{- define "tutor-serving.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tutor-serving.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Labels of every resource; call with (dict "root" $ "component" "gateway"). */}}
{{- define "tutor-serving.labels" -}}
helm.sh/chart: {{ include "tutor-serving.chart" .root }}
{{ include "tutor-serving.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: tutor-serving
{{- end }}

{{/* Labels that select one component's pods. */}}
{{- define "tutor-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tutor-serving.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tutor-serving.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "tutor-serving.engineImage" -}}
{{- $img := .Values.engine.image }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}

{{- define "tutor-serving.gatewayName" -}}
{{- include "tutor-serving.fullname" . }}-gateway
{{- end }}

{{- define "tutor-serving.operatorName" -}}
{{- include "tutor-serving.fullname" . }}-operator
{{- end }}

{{- define "tutor-serving.apiKeySecret" -}}
{{- default (printf "%s-engine-key" (include "tutor-serving.fullname" .)) .Values.engineApiKey.existingSecret }}
{{- end }}

{{- define "tutor-serving.historyName" -}}
{{- include "tutor-serving.fullname" . }}-history
{{- end }}

{{/* The Secret with the history store's password; empty: a store at history.redis.url without one. */}}
{{- define "tutor-serving.historySecret" -}}
{{- $r := .Values.history.redis }}
{{- if $r.existingSecret }}
{{- $r.existingSecret }}
{{- else if $r.enabled }}
{{- include "tutor-serving.historyName" . }}
{{- end }}
{{- end }}

{{/* The history store's URL (no password): the deployed one, or history.redis.url. */}}
{{- define "tutor-serving.historyUrl" -}}
{{- $r := .Values.history.redis }}
{{- if and $r.enabled $r.url }}
{{- fail "history.redis.url names an existing store: set it only with history.redis.enabled=false" }}
{{- else if $r.enabled }}
{{- printf "redis://%s.%s.svc:6379/0" (include "tutor-serving.historyName" .) .Release.Namespace }}
{{- else if not $r.url }}
{{- fail "history.redis.url is required when history.redis.enabled is false: conversations need a store" }}
{{- else }}
{{- $r.url }}
{{- end }}
{{- end }}

{{/* The public WebSocket base the gateway hands out in engine_url. */}}
{{- define "tutor-serving.websocketUrl" -}}
{{- $ing := .Values.gateway.ingress }}
{{- if .Values.gateway.websocketUrl }}
{{- .Values.gateway.websocketUrl }}
{{- else if $ing.enabled }}
{{- printf "%s://%s/ws" (ternary "wss" "ws" $ing.tls.enabled) $ing.host }}
{{- else }}
{{- printf "ws://%s.%s.svc:%d/ws" (include "tutor-serving.gatewayName" .) .Release.Namespace (int .Values.gateway.port) }}
{{- end }}
{{- end }}

{{/* An external LLM base URL for engines; empty gives them the vLLM sidecar. */}}
{{- define "tutor-serving.llmBaseUrl" -}}
{{- $llm := .Values.engine.models.llm }}
{{- if and (not $llm.baseUrl) (not .Values.vllm.enabled) (eq $llm.backend "openai") }}
{{- fail "engine.models.llm.baseUrl is required when vllm.enabled is false and the LLM backend is openai" }}
{{- end }}
{{- $llm.baseUrl }}
{{- end }}

{{/* Pod security context: non-root, RuntimeDefault seccomp. */}}
{{- define "tutor-serving.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context: read-only root, no privilege escalation, no capabilities. */}}
{{- define "tutor-serving.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* The Secret with the management API keys: the generated one, or managementApi.existingSecret. */}}
{{- define "tutor-serving.managementSecret" -}}
{{- default (printf "%s-management-api" (include "tutor-serving.fullname" .)) .Values.gateway.managementApi.existingSecret }}
{{- end }}

{{/* Where the gateway finds the keys file (MANAGEMENT_API_KEYS_FILE), a Secret volume. */}}
{{- define "tutor-serving.managementKeysDir" -}}
/etc/tutor-gateway/management-api
{{- end }}

{{/* prometheus.io annotations for clusters that scrape pods by them; call with (dict "port" N). */}}
{{- define "tutor-serving.scrapeAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | int64 | quote }}
prometheus.io/path: /metrics
{{- end }}

{{/* The Service over the operator's metrics port (ServiceMonitors need one). */}}
{{- define "tutor-serving.operatorMetricsName" -}}
{{- include "tutor-serving.fullname" . }}-operator-metrics
{{- end }}
