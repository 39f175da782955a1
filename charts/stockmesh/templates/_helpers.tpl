{{/*
Helpers shared by every template. Naming and labels follow
docs/deployment-contract.md: objects are <name>-<service>, where <name> is the
release name (or fullnameOverride).
*/}}

{{/* The five services, in a fixed order. */}}
{{- define "stockmesh.serviceNames" -}}
user product inventory order notification
{{- end -}}

{{/*
Every Deployment of the release: the five services, then the web console
when services.web.enabled. Call with the root context.
*/}}
{{- define "stockmesh.deployables" -}}
{{ include "stockmesh.serviceNames" . }}{{ if .Values.services.web.enabled }} web{{ end }}
{{- end -}}

{{/* Services with a gRPC port. */}}
{{- define "stockmesh.grpcServices" -}}
product inventory
{{- end -}}

{{/* Services that serve the public HTTP API (behind the Ingress). */}}
{{- define "stockmesh.apiServices" -}}
user product order notification
{{- end -}}

{{/* Services that talk to RabbitMQ. */}}
{{- define "stockmesh.amqpServices" -}}
order notification
{{- end -}}

{{- define "stockmesh.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "stockmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stockmesh.version" -}}
{{- default .Chart.AppVersion .Values.image.tag | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels (as the operator's: instance + component). Call with (dict "root" $ "component" "user").
*/}}
{{- define "stockmesh.selectorLabels" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
Standard labels. Call with (dict "root" $ "component" "user").
*/}}
{{- define "stockmesh.labels" -}}
app.kubernetes.io/name: stockmesh
{{ include "stockmesh.selectorLabels" . }}
app.kubernetes.io/part-of: stockmesh
app.kubernetes.io/version: {{ include "stockmesh.version" .root | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "stockmesh.chart" .root }}
{{- end -}}

{{/* Labels of objects that belong to the whole release, not one component. */}}
{{- define "stockmesh.commonLabels" -}}
app.kubernetes.io/name: stockmesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: stockmesh
app.kubernetes.io/version: {{ include "stockmesh.version" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "stockmesh.chart" . }}
{{- end -}}

{{/* Image of a service binary. Call with (dict "root" $ "bin" "user"). */}}
{{- define "stockmesh.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.repository .bin (default .root.Chart.AppVersion .root.Values.image.tag) -}}
{{- end -}}

{{- define "stockmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ include "stockmesh.fullname" . }}
{{- else -}}
default
{{- end -}}
{{- end -}}

{{/*
Restricted pod security context (Pod Security Standard "restricted").
Call with the numeric user id.
*/}}
{{- define "stockmesh.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "stockmesh.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The OTLP endpoint services export to; empty when tracing is off. */}}
{{- define "stockmesh.otlpEndpoint" -}}
{{- if .Values.tracing.enabled -}}
{{- if .Values.tracing.otlpEndpoint -}}
{{ .Values.tracing.otlpEndpoint }}
{{- else if .Values.jaeger.enabled -}}
{{ printf "http://%s-jaeger:4317" (include "stockmesh.fullname" .) }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Where a service's DATABASE_URL comes from: "<secret> <key>".
Call with (dict "root" $ "svc" "user").
*/}}
{{- define "stockmesh.dbSecretRef" -}}
{{- if .root.Values.postgresql.managed -}}
{{ printf "%s-%s-db url" (include "stockmesh.fullname" .root) .svc }}
{{- else -}}
{{ printf "%s %s" .root.Values.postgresql.external.existingSecret (get .root.Values.postgresql.external.urlKeys .svc) }}
{{- end -}}
{{- end -}}

{{/* Where AMQP_URL comes from: "<secret> <key>". */}}
{{- define "stockmesh.amqpSecretRef" -}}
{{- if .Values.rabbitmq.managed -}}
{{ printf "%s-rabbitmq url" (include "stockmesh.fullname" .) }}
{{- else -}}
{{ printf "%s %s" .Values.rabbitmq.external.existingSecret .Values.rabbitmq.external.urlKey }}
{{- end -}}
{{- end -}}

{{/*
Data of an existing Secret (for values generated once and kept across
upgrades), or an empty dict. Call with (list $ "secret-name").
*/}}
{{- define "stockmesh.existingSecretData" -}}
{{- $root := index . 0 -}}
{{- $obj := lookup "v1" "Secret" $root.Release.Namespace (index . 1) -}}
{{- if and $obj $obj.data -}}
{{ toJson $obj.data }}
{{- else -}}
{}
{{- end -}}
{{- end -}}

{{/*
BREAKER_MAX_OPEN_MS: resilience.breaker.maxOpenMs, at least openMs; unset,
the larger of openMs and 30000 (as the operator).
*/}}
{{- define "stockmesh.breakerMaxOpenMs" -}}
{{- $b := .Values.resilience.breaker -}}
{{- if kindIs "invalid" $b.maxOpenMs -}}
{{ max (int64 $b.openMs) 30000 }}
{{- else if lt (int64 $b.maxOpenMs) (int64 $b.openMs) -}}
{{ fail (printf "resilience.breaker.maxOpenMs (%v) must be at least openMs (%v)" $b.maxOpenMs $b.openMs) }}
{{- else -}}
{{ int64 $b.maxOpenMs }}
{{- end -}}
{{- end -}}

{{/*
The port of a URL: the explicit one, else the scheme's default (as the
operator's url_ports).
*/}}
{{- define "stockmesh.urlPort" -}}
{{- $u := urlParse . -}}
{{- $port := regexFind ":[0-9]+$" $u.host | trimPrefix ":" -}}
{{- if $port -}}
{{ $port }}
{{- else -}}
{{ get (dict "https" "443" "postgres" "5432" "postgresql" "5432" "amqp" "5672" "amqps" "5671") $u.scheme | default "80" }}
{{- end -}}
{{- end -}}

{{/* The checksum of the configuration every service pod reads. */}}
{{- define "stockmesh.configChecksum" -}}
{{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end -}}

{{/* RabbitMQ configuration (non-secret part). */}}
{{- define "stockmesh.rabbitmqConf" -}}
listeners.tcp.default = 5672
management.tcp.port = 15672
loopback_users = none
log.console = true
log.console.level = info
log.file = false
{{- end -}}
